#!/usr/bin/env bash
# Make a development CA, one server certificate per owner and one client certificate per
# trainer, for TLS and mutual TLS between Mycroft nodes. Not for production: real deployments
# use certificates from the organisation's own CA.
#
#   scripts/make_dev_certs.sh [OUT_DIR] [OWNER_HOSTS...] [-- TRAINER_IDS...]
#   scripts/make_dev_certs.sh certs owner-a owner-b owner-c owner-d -- trainer-1
#
# Writes ca.pem and <name>.pem (certificates, mode 0644) and ca.key and <name>.key (private keys,
# mode 0600: readable by you alone). Running it again keeps the CA and re-issues the others.
# Containers run as uid 10001 (the image's `mycroft` user): hand them the folder with
# `sudo chown -R 10001:10001 certs`, or run them as yourself (`docker run --user "$(id -u)"`).
set -euo pipefail

out=${1:-certs}
shift || true
owners=()
trainers=()
target=owners
for arg in "$@"; do
    if [ "$arg" = "--" ]; then target=trainers; continue; fi
    if [ "$target" = owners ]; then owners+=("$arg"); else trainers+=("$arg"); fi
done
[ ${#owners[@]} -gt 0 ] || owners=(owner-a owner-b owner-c owner-d)
[ ${#trainers[@]} -gt 0 ] || trainers=(trainer-1)

mkdir -p "$out"
# Every file is created private, so no key is ever readable by others, not even for a moment;
# the certificates are opened up once written.
umask 077
days=825

if [ ! -f "$out/ca.pem" ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days "$days" -sha256 \
        -subj "/CN=Mycroft dev CA" -keyout "$out/ca.key" -out "$out/ca.pem" 2>/dev/null
fi

sign() {  # name, extensions file
    local name=$1 ext=$2
    openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=$name" \
        -keyout "$out/$name.key" -out "$out/$name.csr" 2>/dev/null
    openssl x509 -req -in "$out/$name.csr" -CA "$out/ca.pem" -CAkey "$out/ca.key" \
        -CAcreateserial -days "$days" -sha256 -extfile "$ext" -out "$out/$name.pem" 2>/dev/null
    rm -f "$out/$name.csr" "$ext"
}

for host in "${owners[@]}"; do
    ext=$(mktemp)
    # Owners are reached by their compose service name, or on loopback in the simulation.
    printf 'subjectAltName=DNS:%s,DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' \
        "$host" >"$ext"
    sign "$host" "$ext"
done
for trainer in "${trainers[@]}"; do
    ext=$(mktemp)
    # The owner maps the client certificate's common name to a configured trainer id.
    printf 'extendedKeyUsage=clientAuth\n' >"$ext"
    sign "$trainer" "$ext"
done
chmod 644 "$out"/*.pem
chmod 600 "$out"/*.key
echo "wrote CA, ${#owners[@]} owner and ${#trainers[@]} trainer certificates to $out/"
