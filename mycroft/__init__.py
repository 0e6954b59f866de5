"""Mycroft: privacy-preserving data acquisition.

Owners keep their data and reveal only small, budgeted subsets chosen to fix a
trainer's failures; the trainer ranks owners by the utility those subsets bring.
"""

__version__ = "0.1.0"
