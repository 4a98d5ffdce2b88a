"""Small files that are expensive to handle, written byte by byte, for the server's hostile-input battery."""

from __future__ import annotations

import io

from PIL import Image


def pdf_file(objects: list[bytes], root: int = 1) -> bytes:
    """A PDF of `objects` (object i+1 = objects[i]) with a correct cross-reference table."""
    out = io.BytesIO()
    out.write(b"%PDF-1.7\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, root, xref))
    return out.getvalue()


def _stream(dictionary: bytes, data: bytes) -> bytes:
    return b"<< " + dictionary + b" /Length %d >>\nstream\n" % len(data) + data + b"\nendstream"


def nested_xobject_pdf(depth: int = 9, fanout: int = 10) -> bytes:
    """One page whose form XObjects nest `depth` levels, each drawing the one below `fanout` times: a few KB
    that ask the renderer for fanout**depth fills."""
    first_form = 5
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /XObject << /X %d 0 R >> >> "
        b"/Contents 4 0 R >>" % first_form,
        _stream(b"", b"/X Do"),
    ]
    draw = b" ".join(b"q 0.999 0 0 0.999 %d %d cm /X Do Q" % (i % 3, i // 3) for i in range(fanout))
    for level in range(depth):
        child = first_form + level + 1
        objects.append(_stream(b"/Type /XObject /Subtype /Form /BBox [0 0 612 792] "
                               b"/Resources << /XObject << /X %d 0 R >> >>" % child, draw))
    objects.append(_stream(b"/Type /XObject /Subtype /Form /BBox [0 0 612 792]", b"0 0 0 rg 0 0 600 780 re f"))
    return pdf_file(objects)


def lying_page_tree_pdf(claimed: int = 5) -> bytes:
    """A page tree whose /Count claims `claimed` pages over a single page object."""
    return pdf_file([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count %d >>" % claimed,
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
        _stream(b"", b"0 0 0 rg 10 10 100 100 re f"),
    ])


def transparent_png(side: int = 4096) -> bytes:
    """A fully transparent side×side PNG: tens of KB that decode to side² RGBA pixels."""
    buffer = io.BytesIO()
    Image.new("RGBA", (side, side), (0, 0, 0, 0)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def nested_grammar(depth: int = 32_000) -> str:
    """Brackets nested `depth` deep: llama.cpp's recursive grammar parser runs out of stack (issue #26600)."""
    return "root ::= " + "(" * depth + '"a"' + ")" * depth


def empty_messages_body(count: int = 700_000, model: str = "bundle") -> bytes:
    """A body of `count` empty messages: a few MB that pydantic would expand into `count` objects and errors."""
    return b'{"model": "' + model.encode() + b'", "messages": [' + b",".join([b"{}"] * count) + b"]}"
