"""
Certificates made at run time for the TLS tests: a CA and the certificates
it signs, as PEM files in a test's temporary directory (no private key is
ever committed).
"""

from __future__ import annotations

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import ssl

__all__ = ["CA", "Issued"]


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class Issued:
    """
    A certificate and its private key.

    @ivar cert_pem: the certificate, PEM.
    @ivar key_pem: the private key, PEM (PKCS#8).
    """

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert = cert
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        self.key_pem = _key_pem(key)

    @property
    def pem(self) -> bytes:
        """
        Key then certificate in one PEM (what C{--tls-cert-dir} and
        C{--upstream-client-cert} read).
        """
        return self.key_pem + self.cert_pem

    def write(self, directory: str, name: str) -> str:
        """
        Write L{pem} to C{directory/name}; return the path.
        """
        path = os.path.join(directory, name)
        with open(path, "wb") as f:
            f.write(self.pem)
        return path

    def write_split(self, directory: str, stem: str) -> tuple[str, str]:
        """
        Write the key and the certificate to two files, as Twisted's
        C{ssl:privateKey=...:certKey=...} takes them.

        @return: the key's path and the certificate's path.
        """
        key_path = os.path.join(directory, stem + ".key")
        cert_path = os.path.join(directory, stem + ".crt")
        with open(key_path, "wb") as f:
            f.write(self.key_pem)
        with open(cert_path, "wb") as f:
            f.write(self.cert_pem)
        return key_path, cert_path

    def options(self, **kwargs: object) -> ssl.CertificateOptions:
        """
        Server-side TLS options presenting this certificate.
        """
        private = ssl.PrivateCertificate.loadPEM(self.pem)
        return ssl.CertificateOptions(
            privateKey=private.privateKey.original,
            certificate=private.original,
            **kwargs,  # type: ignore[arg-type]
        )


class CA:
    """
    A certificate authority that signs certificates for host names and IP
    addresses.
    """

    def __init__(self, name: str = "lbproxy test CA") -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.cert_pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def write(self, directory: str, name: str = "ca.pem") -> str:
        """
        Write the CA certificate to C{directory/name}; return the path.
        """
        path = os.path.join(directory, name)
        with open(path, "wb") as f:
            f.write(self.cert_pem)
        return path

    def trust_root(self) -> object:
        """
        A Twisted trust root of this CA alone.
        """
        return ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(self.cert_pem)])

    def issue(self, *names: str, client: bool = False) -> Issued:
        """
        A certificate for C{names} (DNS names or IP addresses), the first
        being its common name.

        @param client: for TLS clients (mTLS) rather than servers.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        alternatives: list[x509.GeneralName] = []
        for name in names:
            try:
                alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alternatives.append(x509.DNSName(name))
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(names[0]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        return Issued(cert, key)
