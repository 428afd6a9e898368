"""Credentials that must never be committed: private keys, access keys, passwords."""

from __future__ import annotations

import re




def credential_problems(text: str) -> list[str]:
    patterns = [r"-----BEGIN [A-Z ]*PRIVATE KEY-----", r'"private_key"\s*:', r"AKIA[0-9A-Z]{16}",
                r"(?i)password\s*[:=]\s*(?!REPLACE_ME)[\"']?[A-Za-z0-9+/]{12,}"]
    return [pattern for pattern in patterns if re.search(pattern, text)]
