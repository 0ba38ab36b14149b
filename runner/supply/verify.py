"""Checking an image as `cosign verify --key` and `cosign verify-attestation --key --type
slsaprovenance1` would (offline, no transparency log): the digest the reference names now, a
signature in its `.sig` tag that the key verifies over a payload naming that digest, and an
attestation in its `.att` tag whose DSSE signature the key verifies over the envelope's PAE
and whose statement is SLSA provenance v1 about that digest.

`runner verify` prints what was built from what; the same checks, on bytes already fetched,
verify cosign's own test data (tests/test_signing.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import UnverifiedSignatureError, VerificationError
from securesystemslib.signer import SSlibKey

from runner.core.attestations import SLSA_PROVENANCE_V1
from runner.core.errors import ExecutorError
from runner.core.image_names import NamedRef, parse_normalized
from runner.core.registry_client import INDEX_TYPES, Registries
from runner.supply.cosign import DSSE_ENVELOPE, IN_TOTO, SIGNATURE_TYPE, SIMPLE_SIGNING, Layer, fetch_attached, signature_of


def verifies(public: ec.EllipticCurvePublicKey, signature: bytes, data: bytes) -> bool:
    """ECDSA (the key's curve) over SHA-256 of `data`, the signature DER-encoded."""
    try:
        public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        return True
    except (InvalidSignature, ValueError):
        return False


def signature_verifies(layer: Layer, digest: str, public: ec.EllipticCurvePublicKey) -> str | None:
    """None when `layer` is a simple-signing signature of `digest` that `public` verifies; else why not."""
    if layer.media_type != SIMPLE_SIGNING:
        return f"a layer of type {layer.media_type!r}, not a signature"
    signature = signature_of(layer)
    if signature is None:
        return "a signature layer without a signature annotation"
    if not verifies(public, signature, layer.data):
        return "a signature the key does not verify"
    try:
        critical = json.loads(layer.data)["critical"]
        named, kind = critical["image"]["docker-manifest-digest"], critical["type"]
    except (ValueError, KeyError, TypeError):
        return "a signed payload that is not cosign's simple-signing format"
    if kind != SIGNATURE_TYPE:
        return f"a signed payload of type {kind!r}"
    if named != digest:
        return f"a signature of another digest ({named})"
    return None


def _public_pem(public: ec.EllipticCurvePublicKey) -> str:
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def envelope_statement(data: bytes, digest: str, public: ec.EllipticCurvePublicKey,
                       predicate_type: str | None = SLSA_PROVENANCE_V1) -> tuple[dict | None, str | None]:
    """(the statement, None) when `data` is a DSSE envelope whose signature `public` verifies over
    its PAE, holding an in-toto statement about `digest` (of `predicate_type`, unless None);
    else (None, why not)."""
    try:
        document = json.loads(data)
        # DSSE makes `keyid` optional (a Sigstore bundle's envelope has none); securesystemslib wants one
        signatures = [{"keyid": "", **s} for s in document.get("signatures") or []]
        made = Envelope.from_dict({**document, "signatures": signatures})
    except (ValueError, KeyError, TypeError, AttributeError):
        return None, "not a DSSE envelope"
    if made.payload_type != IN_TOTO:
        return None, f"an envelope of payload type {made.payload_type!r}"
    key_value = {"public": _public_pem(public)}
    pae = made.pae()
    verified = False
    for signature in made.signatures.values():
        key = SSlibKey(signature.keyid, "ecdsa", "ecdsa-sha2-nistp256", key_value)
        try:
            key.verify_signature(signature, pae)
            verified = True
            break
        except (UnverifiedSignatureError, VerificationError):
            continue
    if not verified:
        return None, "an attestation the key does not verify" if made.signatures else "an unsigned attestation"
    try:
        statement = json.loads(made.payload)
        subjects = statement["subject"]
        kind = statement["predicateType"]
    except (ValueError, KeyError, TypeError):
        return None, "a signed payload that is not an in-toto statement"
    if predicate_type is not None and kind != predicate_type:
        return None, f"an attestation of predicate type {kind!r}"
    algorithm, _, value = digest.partition(":")
    if not any(isinstance(s, dict) and (s.get("digest") or {}).get(algorithm) == value for s in subjects):
        return None, "an attestation about another digest"
    return statement, None


@dataclass
class Checked:
    """What `runner verify` found for one digest."""

    ref: str
    digest: str
    platform: str | None = None
    signature: bool = False
    statement: dict | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.signature and self.statement is not None


class Verifier:
    """Verifies images in their registries with a public key."""

    def __init__(self, registries: Registries, public: ec.EllipticCurvePublicKey):
        self.registries, self.public = registries, public

    def verify(self, reference: str) -> list[Checked]:
        """The image `reference` names now (a tag resolved to its digest), and for an index
        each platform's manifest too. Raises ExecutorError when the registry cannot be read,
        ValueError for a reference that is not one."""
        named = parse_normalized(reference)
        client = self.registries.client(named.api_host)
        if named.digest:
            digest, media_type = named.digest, None
        else:
            held = client.head_manifest(named.path, named.tag or "latest")
            if held is None:
                raise ValueError(f"{reference}: the registry has no such image")
            digest, media_type = held
        checked = [self.check(named, digest)]
        if media_type is None or media_type in INDEX_TYPES:
            manifest = client.manifest(named.path, digest)
            checked += [self.check(named, child, platform) for platform, child in manifest.platforms().items()]
        return checked

    def check(self, named: NamedRef, digest: str, platform: str | None = None) -> Checked:
        client = self.registries.client(named.api_host)
        result = Checked(f"{named.name}@{digest}", digest, platform)
        try:
            signatures = fetch_attached(client, named.path, digest, "sig")
            attestations = fetch_attached(client, named.path, digest, "att")
        except ExecutorError as exc:
            result.problems.append(exc.message)
            return result
        reasons = [signature_verifies(layer, digest, self.public) for layer in signatures]
        result.signature = any(reason is None for reason in reasons)
        if not result.signature:
            result.problems.append("no signature the key verifies" + (f" ({'; '.join(sorted({r for r in reasons if r}))})"
                                                                     if reasons else " (no .sig tag)"))
        why_not = []
        for layer in reversed(attestations):  # the newest first
            if layer.media_type != DSSE_ENVELOPE:
                continue
            statement, why = envelope_statement(layer.data, digest, self.public)
            if statement is not None:
                result.statement = statement
                break
            why_not.append(why or "")
        if result.statement is None:
            result.problems.append("no SLSA provenance the key verifies" + (f" ({'; '.join(sorted(set(why_not)))})"
                                                                           if why_not else " (no .att tag)"))
        return result
