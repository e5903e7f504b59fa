#!/bin/sh
# make_certs.sh DIR -- test PKI for the xoauth-proxy test bed (never real credentials).
#
# Creates, in DIR:
#   ca.pem / ca.key                 test CA (RSA-2048, SHA-256, CA:TRUE)
#   server.pem / server.key         leaf + CA chain; SAN IP:127.0.0.1, IP:127.0.0.2, IP:::1, DNS:localhost
#   wronghost.pem / wronghost.key   leaf + CA chain; SAN DNS:wrong.example only (hostname-mismatch tests)
#   selfsigned.pem / selfsigned.key self-signed, SAN DNS:localhost, IP:127.0.0.1 (untrusted-cert tests)
# Idempotent: a file set is regenerated only when missing, expiring within a day
# (openssl x509 -checkend 86400), or (for leaves) no longer signed by ca.pem.
set -eu

dir=${1:?usage: make_certs.sh DIR}
mkdir -p "$dir"
cd "$dir"
umask 077

days_ca=825
days_leaf=825

valid() { # valid CERT: exists and does not expire within 24 h
  [ -s "$1" ] && openssl x509 -in "$1" -noout -checkend 86400 >/dev/null 2>&1
}

signed_by_ca() { # signed_by_ca CERT
  openssl verify -CAfile ca.pem "$1" >/dev/null 2>&1
}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/mkcerts.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

regen_ca=0
if ! valid ca.pem || [ ! -s ca.key ]; then
  regen_ca=1
  cat >"$tmp/ca.cnf" <<'CNF'
[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
CN = xoauth-proxy Test CA
O = xoauth-proxy test bed
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
CNF
  openssl req -x509 -new -newkey rsa:2048 -nodes -sha256 -days "$days_ca" \
    -keyout "$tmp/ca.key" -out "$tmp/ca.pem" -config "$tmp/ca.cnf" 2>/dev/null
  mv -f "$tmp/ca.key" ca.key
  mv -f "$tmp/ca.pem" ca.pem
  echo "make_certs: created CA"
fi

leaf() { # leaf NAME CN SAN
  name=$1 cn=$2 san=$3
  if [ "$regen_ca" = 0 ] && valid "$name.pem" && [ -s "$name.key" ] && signed_by_ca "$name.pem"; then
    return 0
  fi
  cat >"$tmp/$name.ext" <<CNF
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = $san
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
CNF
  openssl req -new -newkey rsa:2048 -nodes -sha256 -subj "/CN=$cn/O=xoauth-proxy test bed" \
    -keyout "$tmp/$name.key" -out "$tmp/$name.csr" 2>/dev/null
  openssl x509 -req -in "$tmp/$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
    -CAserial "$tmp/ca.srl" -sha256 -days "$days_leaf" -extfile "$tmp/$name.ext" \
    -out "$tmp/$name.crt" 2>/dev/null
  cat "$tmp/$name.crt" ca.pem >"$tmp/$name.pem"
  mv -f "$tmp/$name.key" "$name.key"
  mv -f "$tmp/$name.pem" "$name.pem"
  echo "make_certs: created $name"
}

leaf server localhost "IP:127.0.0.1,IP:127.0.0.2,IP:::1,DNS:localhost"
leaf wronghost wrong.example "DNS:wrong.example"

if ! valid selfsigned.pem || [ ! -s selfsigned.key ]; then
  cat >"$tmp/ss.cnf" <<'CNF'
[req]
distinguished_name = dn
prompt = no
x509_extensions = v3
[dn]
CN = localhost
O = xoauth-proxy self-signed
[v3]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
CNF
  openssl req -x509 -new -newkey rsa:2048 -nodes -sha256 -days "$days_leaf" \
    -keyout "$tmp/selfsigned.key" -out "$tmp/selfsigned.pem" -config "$tmp/ss.cnf" 2>/dev/null
  mv -f "$tmp/selfsigned.key" selfsigned.key
  mv -f "$tmp/selfsigned.pem" selfsigned.pem
  echo "make_certs: created selfsigned"
fi

chmod 600 ca.key server.key wronghost.key selfsigned.key
chmod 644 ca.pem server.pem wronghost.pem selfsigned.pem
