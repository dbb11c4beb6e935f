"""Which native model something was made with: the identity (name, embedding size, weights
fingerprint) that MLA's checkpoints of acquirers and files of image embeddings record, so that
neither is ever paired with another native model."""

from dataclasses import asdict, dataclass


class NativeModelMismatch(ValueError):
    """Something trained against one native model was paired with another."""


@dataclass(frozen=True)
class NativeIdentity:
    name: str
    embed_dim: int
    fingerprint: str  # sha256 of every weight (names, shapes, dtypes, values)

    def check_matches(self, other: "NativeIdentity", what: str) -> None:
        if self != other:
            raise NativeModelMismatch(
                f"{what} was made with native model {self.name!r} (embedding size {self.embed_dim}, "
                f"weights {self.fingerprint[:12]}) but the native model loaded now is {other.name!r} "
                f"(embedding size {other.embed_dim}, weights {other.fingerprint[:12]}); load the native "
                f"model it was made with, or train/extract again against this one")

    @classmethod
    def from_dict(cls, data: dict) -> "NativeIdentity":
        return cls(str(data["name"]), int(data["embed_dim"]), str(data["fingerprint"]))

    def to_dict(self) -> dict:
        return asdict(self)
