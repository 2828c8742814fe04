"""Generated code as a person would write it: lines of at most `WIDTH` columns, broken at the
top-level commas of a bracket, and no import that nothing uses."""

from __future__ import annotations

import re

WIDTH = 120  # the longest generated line


def _scan(code: str) -> tuple[list[int], list[bool], int]:
    """Per character of one line of code: the bracket depth before it (a closing bracket: after it)
    and whether it lies inside a string literal; and where a comment starts (``len(code)`` if none)."""
    depth, quoted, d, quote, i = [], [], 0, None, 0
    while i < len(code):
        c = code[i]
        if quote is not None or c in "'\"":  # inside a string, or opening one
            if quote is None:
                quote = c * 3 if code.startswith(c * 3, i) else c
                n = len(quote)
            elif c == "\\":
                n = 2
            elif code.startswith(quote, i):
                n, quote = len(quote), None
            else:
                n = 1
            depth += [d] * n
            quoted += [True] * n
            i += n
            continue
        if c == "#":
            return depth, quoted, i
        depth.append(d)
        quoted.append(False)
        if c in "([{":
            d += 1
        elif c in ")]}":
            d -= 1
            depth[-1] = d
        i += 1
    return depth[:len(code)], quoted[:len(code)], len(code)


def _break(code: str, width: int) -> list[str] | None:
    """``code`` (no comment) broken at the top-level commas of its first bracket that has some:
    the items aligned after the bracket, or indented by 8 on the next lines when that column is
    too far right. None when it has no such bracket."""
    indent = code[:len(code) - len(code.lstrip())]
    depth, quoted, _ = _scan(code)
    for o in (i for i, c in enumerate(code) if c in "([{" and depth[i] == 0):
        close = next((i for i in range(o + 1, len(code)) if depth[i] == 0 and code[i] in ")]}"), None)
        commas = [] if close is None else [i for i in range(o + 1, close)
                                            if code[i] == "," and depth[i] == 1 and not quoted[i]]
        if not commas:
            continue
        items = [code[a:b].strip() for a, b in zip([o + 1] + [c + 1 for c in commas], commas + [close])]
        items = [it + "," for it in items[:-1]] + [items[-1] + code[close:]]
        out, cur, pad = [], code[:o + 1], " " * (o + 1)
        if o + 1 + max(len(it) for it in items) > width:  # hanging indent
            out, cur, pad = [cur], None, indent + " " * 8
        for it in items:
            if cur is None:
                cur = pad + it
            elif cur.endswith(("(", "[", "{")):
                cur += it
            elif len(cur) + 1 + len(it) > width:
                out.append(cur)
                cur = pad + it
            else:
                cur += " " + it
        return out + [cur]
    return None


def wrap(line: str, width: int = WIDTH) -> list[str]:
    """``line`` as lines of at most ``width`` columns where it can be: broken at the top-level commas
    of its first bracket that has some (`_break`), again for any piece still too long; a trailing
    comment stays on the last line, or goes on its own line above when it does not fit there."""
    if len(line) <= width:
        return [line]
    indent = line[:len(line) - len(line.lstrip())]
    _, _, at = _scan(line)
    code, comment = line[:at].rstrip(), line[at:]
    out = _break(code, width)
    if out is None:
        return [indent + comment, code] if comment else [line]
    out = [w for piece in out for w in (wrap(piece, width) if len(piece) > width else [piece])]
    if comment:
        if len(out[-1]) + 2 + len(comment) <= width:
            out[-1] += "  " + comment
        else:
            out.insert(0, indent + comment)
    return out


def _net_depth(line: str) -> int:
    """Brackets opened minus closed by one line of code (strings and the comment skipped)."""
    _, quoted, at = _scan(line)
    return sum((c in "([{") - (c in ")]}") for c, q in zip(line[:at], quoted) if not q)


def imported_name(line: str) -> str | None:
    """The name a one-name import line binds (``import a.b as c``: ``c``; ``import a.b``: ``a``), or
    None for anything else."""
    m = re.fullmatch(r"(?:from \S+ )?import \S+(?: as (\w+))?", line)
    return None if m is None else m.group(1) or line.split()[-1].split(".")[0]


def uses(code: str, name: str) -> bool:
    """Whether ``code`` reads ``name`` (not as an attribute of something else)."""
    return re.search(rf"(?<![\w.]){re.escape(name)}\b", code) is not None


def wrap_module(source: str, width: int = WIDTH) -> str:
    """``source`` with every statement that has a line over ``width`` columns joined (its bracketed
    continuation lines) and broken again by `wrap`; everything else, and the text of triple-quoted
    strings, as it was."""
    lines, out, i, in_text = source.split("\n"), [], 0, False
    while i < len(lines):
        line = lines[i]
        if in_text or line.count('"""') % 2 or line.count("'''") % 2:
            in_text ^= bool(line.count('"""') % 2 or line.count("'''") % 2)
            out.append(line)
            i += 1
            continue
        group, net = [line], _net_depth(line)
        while net > 0 and i + len(group) < len(lines):
            group.append(lines[i + len(group)])
            net += _net_depth(group[-1])
        i += len(group)
        if all(len(g) <= width for g in group) or any(_scan(g)[2] < len(g) for g in group[:-1]):
            out += group  # fits, or a comment inside the statement: kept as written
            continue
        joined = group[0].rstrip()
        for g in group[1:]:
            g = g.strip()
            joined += g if joined.endswith(("(", "[", "{")) or g.startswith((")", "]", "}")) else " " + g
        out += wrap(joined, width)
    return "\n".join(out)
