"""The `signing:` section: the key every pushed image is signed with (runner.supply), and
whether a failure to sign fails the job."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from runner.core.models import Strict

DEFAULT_BUILDER_ID = "urn:ci-build-runner:builder"


class SigningConfig(Strict):
    key_file: Path | None = Field(default=None, description="PEM ECDSA P-256 private key (PKCS#8 or EC; `runner keys "
                                  "generate` makes one): every pushed digest gets a cosign signature (`sha256-<hex>.sig`) "
                                  "and its provenance is signed (`sha256-<hex>.att`). Read at start and again when the "
                                  "file changes. None: provenance is attached unsigned")
    passphrase_file: Path | None = Field(default=None, description="file holding the key's passphrase (an encrypted key)")
    public_key_file: Path | None = Field(default=None, description="the public key given to verifiers (cosign verify "
                                         "--key, runner verify --key, admission policies): `runner doctor` checks it is "
                                         "the public half of key_file")
    required: bool | None = Field(default=None, description="a signature or attestation that cannot be stored (a registry "
                                  "refusing the extra tags, a quota, a key that does not load) fails the job as "
                                  "`infrastructure`, never leaving an unsigned image; default: true when key_file is set")
    builder_id: str = Field(default=DEFAULT_BUILDER_ID, min_length=1, max_length=512,
                            description="the provenance's builder id: a URI naming this build platform (e.g. "
                            "https://ci.example.com/runner); what a policy may require")

    @model_validator(mode="after")
    def _passphrase_needs_key(self) -> SigningConfig:
        for name in ("passphrase_file", "public_key_file"):
            if getattr(self, name) is not None and self.key_file is None:
                raise ValueError(f"signing.{name} is set but signing.key_file is not")
        return self

    @property
    def must_sign(self) -> bool:
        """Does a failure to sign fail the job?"""
        return self.required if self.required is not None else self.key_file is not None
