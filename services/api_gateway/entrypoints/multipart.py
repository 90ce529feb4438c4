"""Files in a multipart/form-data body: each part's filename is its path (or,
when the filename is not an absolute path and its field name is, the name)."""
from __future__ import annotations

import email.parser
import email.policy


def form_files(content_type: str, body: bytes, path: str | None = None
               ) -> list[tuple[str, bytes]]:
    """(name, bytes) of each part that has a filename (or `path`, when the form
    holds one part)."""
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    parts: list[tuple[str, bytes]] = []
    for part in msg.iter_parts():
        filename = part.get_filename()
        field = part.get_param("name", header="content-disposition")
        if not (filename or "").startswith("/") and isinstance(field, str) and \
                field.startswith("/"):
            filename = field
        name, data = filename or path, part.get_payload(decode=True)
        if name:
            parts.append((name, data if isinstance(data, bytes) else b""))
    return [(path, parts[0][1])] if len(parts) == 1 and path else parts
