"""A small site CA (``cryptography``): the CA, site certificates for rpvd and client
certificate directories for NBD clients. Runs locally, without rpvd."""

from __future__ import annotations

import datetime
import os


def _write_private(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def init_ca(directory: str, name: str = "glvm site CA", days: int = 3650) -> tuple[str, str]:
    """Create ca.pem and ca.key in ``directory`` (refusing to overwrite)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    os.makedirs(directory, mode=0o700, exist_ok=True)
    cert_path, key_path = os.path.join(directory, "ca.pem"), os.path.join(directory, "ca.key")
    if os.path.exists(cert_path) or os.path.exists(key_path):
        raise FileExistsError(f"{cert_path} already exists")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return _save(key, cert, cert_path, key_path)


def issue(directory: str, site: str, days: int = 825, ips: list[str] | None = None,
          dns: list[str] | None = None) -> tuple[str, str]:
    """Create SITE.pem / SITE.key signed by the CA in ``directory`` (for client and server).

    ``ips`` and ``dns`` become subject alternative names: NBD clients (libnbd, qemu) check
    the server's address against them, the RPV link does not."""
    _check_name(site, "site")
    cert_path = os.path.join(directory, f"{site}.pem")
    key_path = os.path.join(directory, f"{site}.key")
    return _sign(directory, site, days, cert_path, key_path, ips or [], dns or [])


#: File names an NBD client's certificate directory holds (GnuTLS's x509 layout, read by
#: libnbd's ``tls-certificates=DIR`` and qemu's ``tls-creds-x509,dir=DIR``).
CLIENT_FILES = ("ca-cert.pem", "client-cert.pem", "client-key.pem")


def issue_client(directory: str, name: str, out: str, days: int = 825) -> str:
    """Create an NBD client's certificate directory ``out`` (see :data:`CLIENT_FILES`),
    signed by the CA in ``directory``; return ``out``."""
    import shutil

    _check_name(name, "client")
    os.makedirs(out, mode=0o700, exist_ok=True)
    ca, cert, key = (os.path.join(out, f) for f in CLIENT_FILES)
    if any(os.path.exists(p) for p in (ca, cert, key)):
        raise FileExistsError(f"{out} already holds a client certificate")
    _sign(directory, name, days, cert, key, [], [])
    shutil.copyfile(os.path.join(directory, "ca.pem"), ca)
    return out


def _check_name(name: str, what: str) -> None:
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"{what} name '{name}' must be letters, digits, - or _")


def _sign(directory: str, name: str, days: int, cert_path: str, key_path: str,
          ips: list[str], dns: list[str]) -> tuple[str, str]:
    """A key and a certificate for CN=``name``, signed by the CA in ``directory``."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    try:
        addrs = [ipaddress.ip_address(a) for a in ips]
    except ValueError as e:
        raise ValueError(f"--ip: {e}") from None
    with open(os.path.join(directory, "ca.pem"), "rb") as f:
        ca_cert = x509.load_pem_x509_certificate(f.read())
    with open(os.path.join(directory, "ca.key"), "rb") as f:
        ca_key = serialization.load_pem_private_key(f.read(), password=None)
    if os.path.exists(cert_path) or os.path.exists(key_path):
        raise FileExistsError(f"{cert_path} already exists")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                     ExtendedKeyUsageOID.CLIENT_AUTH]),
                              critical=False))
    if addrs or dns:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(d) for d in dns] + [x509.IPAddress(a) for a in addrs]),
            critical=False)
    return _save(key, builder.sign(ca_key, hashes.SHA256()), cert_path, key_path)


def _save(key, cert, cert_path: str, key_path: str) -> tuple[str, str]:
    """Write the private key (mode 0600) and the certificate as PEM; return their paths."""
    from cryptography.hazmat.primitives import serialization

    _write_private(key_path, key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path
