from __future__ import annotations


class CodecError(ValueError):
    """Input a codec cannot accept. `reason` is a metric label value, `detail` is for humans; `device` is the
    canonical id of the device it came from when the codec got that far."""

    def __init__(self, reason: str, detail: str, field: str | None = None, device: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.field = field
        self.device = device
