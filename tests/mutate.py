"""Mutated .nn inputs for fuzzing the command line.

`make_case(rng)` draws one `Case`: the bytes of a model file, the (often hostile) path
it is passed as, and the list of mutations applied.  Seeds are the examples and
programs from program_generator; mutations are token, line and character edits,
extreme numbers and sizes, look-alike unicode names, control characters, a BOM, CRLF,
deep nesting, odd statements and invalid UTF-8.  File names carry quotes, comment
terminators, backslashes, newlines and payloads that create a file named PWNED if
the name ever reaches generated code unquoted.

Everything is drawn from the `random.Random` given, so a case is made again from the
same seed (cli_fuzz seeds case k of run S with the string f"{S}:{k}").
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent / "examples"

# the file name payloads create this file in the working folder when executed
SENTINEL = "PWNED"


@dataclass
class Case:
    data: bytes                      # the model file's content
    path: str                        # relative path (folders included) it is written to and passed as
    how: list = field(default_factory=list)   # the mutations, in order
    seed_name: str = ""              # which seed program
    preserving: bool = True          # only edits that keep the program's meaning
    original: str = ""               # the seed text before mutation


# ---- seeds -----------------------------------------------------------------------------

def example_texts() -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(EXAMPLES.glob("*.nn"))}


_EXAMPLES: dict[str, str] | None = None


def seed_program(rng: random.Random) -> tuple[str, str]:
    """(label, text): an example (a third of the time) or a generated program."""
    global _EXAMPLES
    if _EXAMPLES is None:
        _EXAMPLES = example_texts()
    if rng.random() < 0.33:
        name = rng.choice(sorted(_EXAMPLES))
        return name, _EXAMPLES[name]
    from program_generator import generate
    s = rng.randrange(10 ** 9)
    # without a network line the name comes from the file name: exercised on purpose
    return f"generate({s})", generate(random.Random(s), f"g{s}" if rng.random() < 0.7 else None)


# ---- tokens ----------------------------------------------------------------------------

TOKEN = re.compile(r"(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<name>[^\W\d]\w*)|(?P<str>\"[^\"\n]*\")"
                   r"|(?P<op>\|>|[<>=!]=|\S)|(?P<ws>\s+)")

KEYWORDS = ["network", "input", "target", "output", "loss", "fn", "layer", "param", "init", "for",
            "sum", "mean", "max", "min", "where", "true", "false", "logsumexp", "batch"]
OPERATORS = ["|>", "+", "-", "*", "/", "^", "=", "(", ")", "[", "]", "{", "}", ",", ":", "<", ">", "<=",
             ">=", "==", "!=", ".", "#", "\"", "'", "@", "$", "\\", ";"]
EXTREME_NUMBERS = ["1e309", "1e-400", "9" * 4300, "1" + "0" * 4299, "0", "-0", "0.0", "-0.0", "00", "0e0",
                   "1e308", "1.7976931348623157e308", "5e-324", "2.2250738585072014e-308", "1e-320",
                   "4.9e-324", "1e1000000", "0." + "0" * 400 + "1", "1." + "0" * 5000, "123456789012345678901234567890",
                   "2147483647", "2147483648", "4294967296", "9223372036854775807", "9223372036854775808",
                   "18446744073709551616", "1e18", "1e9", "65536", "-1", "-2147483648", "3.0", "2.5", "1e0",
                   "0x10", "1_000", "1e", "1e+", ".", "..", "1..2", "1.2.3", "1e5e5", "٣", "３", "NaN", "inf",
                   "-inf", "nan"]
HUGE_SIZES = ["0", "-1", "-0", "1", "100000", "1000000", "100000000", "2147483647", "2147483648",
              "4294967297", "9223372036854775808", "10" + "0" * 40, "9" * 4300, "1e6", "1e309", "2.0", "0.5"]


def tokens(text: str) -> list[tuple[str, str]]:
    """(kind, text) of every token, whitespace included, so that joining gives text."""
    return [(m.lastgroup, m.group()) for m in TOKEN.finditer(text)]


def join(toks) -> str:
    return "".join(t for _, t in toks)


def _solid(toks) -> list[int]:
    return [i for i, (k, _) in enumerate(toks) if k != "ws"]


def names_in(text: str) -> dict[str, list[str]]:
    """Tensor names by role, read off the program's lines."""
    roles = {"input": [], "target": [], "tensor": []}
    for line in text.splitlines():
        m = re.match(r"\s*(input|target)\s+(\w+)", line)
        if m:
            roles[m.group(1)].append(m.group(2))
        m = re.match(r"\s*(\w+)\s*=(?!=)", line)
        if m and m.group(1) != "loss" and not line.startswith((" ", "\t")):
            roles["tensor"].append(m.group(1))
    return roles


# ---- mutations: each (rng, text) -> text; PRESERVING ones keep the meaning ---------------

def del_token(rng, text):
    toks = tokens(text)
    idx = _solid(toks)
    if idx:
        del toks[rng.choice(idx)]
    return join(toks)


def dup_token(rng, text):
    toks = tokens(text)
    idx = _solid(toks)
    if idx:
        i = rng.choice(idx)
        toks.insert(i, toks[i] if rng.random() < 0.5 else ("ws", toks[i][1] + " "))
    return join(toks)


def swap_tokens(rng, text):
    toks = tokens(text)
    idx = _solid(toks)
    if len(idx) >= 2:
        if rng.random() < 0.5:  # neighbours: the likely typo
            k = rng.randrange(len(idx) - 1)
            i, j = idx[k], idx[k + 1]
        else:
            i, j = rng.sample(idx, 2)
        toks[i], toks[j] = toks[j], toks[i]
    return join(toks)


def replace_token(rng, text):
    toks = tokens(text)
    idx = _solid(toks)
    if idx:
        i = rng.choice(idx)
        pool = rng.choice([KEYWORDS, OPERATORS, EXTREME_NUMBERS, [t for _, t in toks if t.strip()]])
        toks[i] = ("op", rng.choice(pool))
    return join(toks)


def extreme_number(rng, text):
    toks = tokens(text)
    nums = [i for i, (k, _) in enumerate(toks) if k == "num"]
    if nums:
        for i in rng.sample(nums, min(len(nums), rng.choice([1, 1, 2, len(nums)]))):
            toks[i] = ("num", rng.choice(EXTREME_NUMBERS))
    return join(toks)


def huge_size(rng, text):
    """A shape extent or a layer's size argument made huge, zero or negative."""
    sites = list(re.finditer(r"(?<=[\[,(]) *(\d+)(?= *[\],)])", text))
    if not sites:
        return text
    m = rng.choice(sites)
    return text[:m.start(1)] + rng.choice(HUGE_SIZES) + text[m.end(1):]


def del_line(rng, text):
    lines = text.split("\n")
    del lines[rng.randrange(len(lines))]
    return "\n".join(lines)


def dup_line(rng, text):
    lines = text.split("\n")
    i = rng.randrange(len(lines))
    lines.insert(i, lines[i])
    return "\n".join(lines)


def swap_lines(rng, text):
    lines = text.split("\n")
    if len(lines) >= 2:
        i, j = rng.sample(range(len(lines)), 2)
        lines[i], lines[j] = lines[j], lines[i]
    return "\n".join(lines)


def move_line(rng, text):
    lines = text.split("\n")
    line = lines.pop(rng.randrange(len(lines)))
    lines.insert(rng.randrange(len(lines) + 1), line)
    return "\n".join(lines)


def del_char(rng, text):
    if not text:
        return text
    i = rng.randrange(len(text))
    return text[:i] + text[i + 1:]


def dup_char(rng, text):
    if not text:
        return text
    i = rng.randrange(len(text))
    return text[:i] + text[i] * rng.choice([2, 2, 3, 50]) + text[i + 1:]


def swap_chars(rng, text):
    if len(text) < 2:
        return text
    i = rng.randrange(len(text) - 1)
    return text[:i] + text[i + 1] + text[i] + text[i + 2:]


def insert_char(rng, text):
    i = rng.randrange(len(text) + 1)
    ch = rng.choice([chr(rng.randrange(32, 127)), rng.choice(CONTROL + LOOKALIKE_CHARS)])
    return text[:i] + ch + text[i:]


def truncate(rng, text):
    return text[:rng.randrange(len(text) + 1)]


# look-alikes of ASCII letters: full width, Cyrillic, Greek, mathematical (NFKC folds
# some of them back to ASCII, which is where two names can become one)
LOOKALIKES = {
    "a": ["ａ", "а", "α", "𝐚", "a\u0301", "ª"], "x": ["ｘ", "х", "𝐱", "ˣ", "x\u0308"],
    "y": ["ｙ", "у", "𝐲", "ʸ"], "e": ["ｅ", "е", "ℯ", "e\u0301"], "o": ["ｏ", "о", "ο", "º"],
    "h": ["ｈ", "һ", "ℎ", "ʰ"], "w": ["ｗ", "ԝ", "𝐰", "ʷ"], "z": ["ｚ", "ᴢ", "𝐳"],
    "i": ["ｉ", "і", "ⅰ", "ı", "ⁱ"], "n": ["ｎ", "ո", "ⁿ"], "s": ["ｓ", "ѕ", "ſ"], "d": ["ｄ", "ԁ", "ⅾ"],
    "l": ["ｌ", "ӏ", "ℓ", "ⅼ"], "u": ["ｕ", "ս"], "g": ["ｇ", "ɡ"], "t": ["ｔ", "ｔ"], "fi": ["ﬁ"],
    "1": ["１", "¹", "₁"], "0": ["０", "⁰"], "_": ["＿", "‗"],
}
LOOKALIKE_CHARS = [c for v in LOOKALIKES.values() for c in v] + ["\u200b", "\u200d", "\u2060", "\ufeff",
                                                                   "\u00a0", "\u3000", "\u202e", "🙂"]


def lookalike(rng, text):
    """One identifier (one occurrence, or all of them) spelled with a look-alike letter."""
    toks = tokens(text)
    cands = [i for i, (k, t) in enumerate(toks) if k == "name" and any(c in t for c in LOOKALIKES)]
    if not cands:
        return text
    i = rng.choice(cands)
    word = toks[i][1]
    keys = [c for c in LOOKALIKES if c in word]
    key = rng.choice(keys)
    new = word.replace(key, rng.choice(LOOKALIKES[key]), 1 if rng.random() < 0.7 else -1)
    if rng.random() < 0.5:  # every occurrence: a consistent program with a unicode name
        return join([(k, new if t == word and k == "name" else t) for k, t in toks])
    toks[i] = ("name", new)
    return join(toks)


def lookalike_twin(rng, text):
    """A second tensor whose name differs from one already bound only by a look-alike letter
    (NFKC may fold the two into one Python or C identifier), used after it."""
    lines = text.split("\n")
    binds = [i for i, ln in enumerate(lines) if re.match(r"[A-Za-z_]\w*\s*=[^=]", ln) and not ln.startswith("loss")]
    if not binds:
        return text
    i = rng.choice(binds)
    name = lines[i].split("=")[0].strip()
    keys = [c for c in LOOKALIKES if c in name]
    twin = name.replace(keys[0], rng.choice(LOOKALIKES[keys[0]]), 1) if keys else name + "\u0301"
    lines.insert(i + 1, f"{twin} = {name} |> {rng.choice(['relu', 'tanh', 'identity', 'sigmoid'])}")
    for j in range(len(lines) - 1, i + 1, -1):  # the last use of name reads the twin instead
        new = re.sub(rf"(?<![\w.]){re.escape(name)}(?!\w)", twin, lines[j])
        if new != lines[j] and not lines[j].startswith(("fn ", "layer ", " ", "\t")):
            lines[j] = new
            break
    return "\n".join(lines)


CONTROL = ["\x00", "\x01", "\x07", "\x08", "\x0b", "\x0c", "\x1b", "\x1c", "\x1d", "\x1e", "\x1f", "\x7f",
           "\x85", "\u2028", "\u2029", "\r", "\t", "\ud800", "\ufffe", "\uffff", "\U0010ffff", "\U000e0001"]


def control_char(rng, text):
    """A control or line-separator character in a comment, at a line end or anywhere."""
    ch = rng.choice(CONTROL)
    where = rng.random()
    lines = text.split("\n")
    i = rng.randrange(len(lines))
    if where < 0.35:
        lines[i] += "  # note " + ch + " more"
    elif where < 0.6:
        lines[i] += ch
    else:
        return insert_at(rng, text, ch)
    return "\n".join(lines)


def insert_at(rng, text, s):
    i = rng.randrange(len(text) + 1)
    return text[:i] + s + text[i:]


def comment_noise(rng, text):
    """Unicode, quotes and escapes in comments: meaning unchanged."""
    lines = text.split("\n")
    i = rng.randrange(len(lines))
    lines[i] += "  # " + rng.choice(['"""', "'''", "\\", "\\n", "*/", "/*", "{{ x }}", "{% if %}", "ｗ", "мир",
                                     "e\u0301", "🙂", "%s%n", "<script>", "`touch PWNED`", "\\N{BULLET}"])
    return "\n".join(lines)


def bom(rng, text):
    """A byte-order mark opens the file: meaning unchanged (a second one is a stray character)."""
    return text if text.startswith("\ufeff") else "\ufeff" + text


def bom_inside(rng, text):
    return insert_at(rng, text, "\ufeff")


def crlf(rng, text):
    return text.replace("\n", "\r\n")


def lone_cr(rng, text):
    return text.replace("\n", "\r") if rng.random() < 0.3 else insert_at(rng, text, "\r")


def mixed_newlines(rng, text):
    return "".join(c if c != "\n" else rng.choice(["\n", "\r\n"]) for c in text)


def whitespace(rng, text):
    """Trailing spaces, blank lines, no final newline: meaning unchanged."""
    k = rng.randrange(3)
    if k == 0:
        return "\n".join(line + rng.choice(["", " ", "\t", "   "]) for line in text.split("\n"))
    if k == 1:  # blank lines first, but after a byte-order mark, which only opens a file
        mark = "\ufeff" if text.startswith("\ufeff") else ""
        return mark + "\n\n\n" + text[len(mark):].replace("\n", "\n\n") + "\n\n"
    return text.rstrip("\n")


def _rhs_names(text):
    """(position, name) of tensor references after '=' on network-level lines."""
    roles = names_in(text)
    known = set(roles["input"] + roles["tensor"])
    sites = []
    pos = 0
    for line in text.split("\n"):
        m = re.match(r"(\w+)\s*=\s*(?:sum\s+|mean\s+)?", line)
        if m and not line.startswith((" ", "\t", "fn", "layer")):
            for t in re.finditer(r"\b(\w+)\b", line[m.end():]):
                if t.group(1) in known:
                    sites.append((pos + m.end() + t.start(), t.group(1)))
        pos += len(line) + 1
    return sites


NEST_DEPTHS = [3, 30, 300, 1000, 3000, 30000]


def deep_nesting(rng, text):
    """A tensor reference wrapped in many parentheses, unary minuses, a long pipe or sum."""
    sites = _rhs_names(text)
    if not sites:
        return text
    pos, name = rng.choice(sites)
    n = rng.choice(NEST_DEPTHS)
    k = rng.randrange(5)
    if k == 0:
        new = "(" * n + name + ")" * n
    elif k == 1:
        new = "-" * n + name
    elif k == 2:
        new = "- " * n + name
    elif k == 3:
        new = "(" + name + " |> relu" * min(n, 300) + ")"
    else:
        new = "(" + " + ".join([name] * min(n, 3000)) + ")"
    return text[:pos] + new + text[pos + len(name):]


def deep_formula(rng, text):
    """A user fn whose formula nests deeply, applied to a tensor."""
    sites = _rhs_names(text)
    if not sites:
        return text
    pos, name = rng.choice(sites)
    n = rng.choice(NEST_DEPTHS)
    body = rng.choice(["(" * n + "z" + ")" * n, "-" * n + "z", " + ".join(["z"] * min(n, 3000)),
                       "tanh(" * min(n, 2000) + "z" + ")" * min(n, 2000), "z" + "^1" * min(n, 3000)])
    text = text[:pos] + f"deepfn({name})" + text[pos + len(name):]
    return f"fn deepfn(z) = {body}\n" + text


# statements that are wrong, odd or borderline; $x is an input or tensor, $y a target
ODD_LINES = [
    "output nothing", "output loss", "loss = loss", "network", "network 1x", "network a b", "network $x",
    "network import", "network class", "network np", "network None", "network __init__", "network main",
    "input $x: [3]", "target $y: [3]", "input q: []", "input q: [0]", "input q: [-3]", "input q: [2.5]",
    "input q: [1e309]", "input q: [" + "9" * 4300 + "]", "input q: [3, 0]", "input q: [2147483648, 2]",
    "target loss: [3]", "input np: [3]", "input params: [3]", "input lr: [3]", "input self: [3]",
    "fn f(z) = f(z)", "fn f(z) = g(z)\nfn g(z) = f(z)", "fn f(a[i]) = sum(i: a[j])",
    "fn f(a[i]) = sum(i, i: a[i])", "layer L(x: [k]) {\n    y[i] = y[i]\n}", "layer L(x: [k]) {\n}",
    "layer L(x: [k]) { param w: [k] }", "layer L(x: [k], k) {\n    y[i] = x[i]\n}",
    "layer L(x: [k]) {\n    y[i] = x[i + 1000000000000]\n}", "layer L(x: [k]) {\n    y[i] = x[i*0]\n}",
    "layer L(x: [k]) {\n    param w: [k] init normal(0, -1)\n    y[i] = x[i] * w[i]\n}",
    "layer L(x: [k]) {\n    y[i] = x[i] for i < 1e309\n}",
    "layer L(x: [k]) {\n    y[i] = x[i] for i < 0\n}",
    "h9 = $x |> dense(0)", "h9 = $x |> dense(-1)", "h9 = $x |> dense(3, bias=2)", 'h9 = $x |> dense(3, name="")',
    'h9 = $x |> dense(3, name="dense_1")', "h9 = $x |> dense(3, init=foo)", "h9 = $x |> conv2d(1, 99)",
    'h9 = $x |> dense(3, name="a\\nb")', 'h9 = $x |> dense(3, name="""")', 'h9 = $x |> dense(3, name="*/")',
    "h9 = concat()", "h9 = concat($x)", "h9 = 1 / 0", "h9 = $x / 0", "h9 = $x ^ $x", "h9 = $x[0]",
    "h9 = sum($x)", "h9 = max($x, $x)", "h9 = where($x > 0, $x, 1)", "loss = sum sum quadratic($x, $y)",
    "h9 = $x |> $x", "h9 = $x |> 3", "h9 = $x |> dense", "h9 = dense($x)", "h9 = softmax($x, $x)",
    "fn sigmoid(z) = z", "fn exp(z) = z", "layer dense(x: [k], n) {\n    y[i] = x[i]\n}", "fn sum(z) = z",
    "fn f() = 1", "fn f(z, z) = z", "fn f(z) = z * undefined", "fn f(z = 1e309) = z",
    "h9 = $x |> dense(99999999999999999999)", "h9 = $x |> dense(2147483648)", "h9 = $x |> dense(1e3)",
    "h9 = 1e309 * $x", "h9 = 1e-400 * $x", "h9 = -0 * $x", "h9 = 0 * $x", "h9 = $x * 1e308 * 1e308",
    "import os", "def f(): pass", "__import__('os')", "loss = 1", "output 3", "loss = quadratic($x, $x)",
    "h9 = $x |> leaky_relu(slope=1e309)", "h9 = $x |> elu(alpha=-1e-400)", "h9 = $x |> maxpool2d(0)",
    "$x = $x", "$x = $x |> relu", "h9 = h9", "h9 = h10\nh10 = h9",
]


def odd_line(rng, text):
    roles = names_in(text)
    x = rng.choice(roles["input"] + roles["tensor"] or ["x"])
    y = rng.choice(roles["target"] or ["y"])
    line = rng.choice(ODD_LINES).replace("$x", x).replace("$y", y)
    lines = text.split("\n")
    lines.insert(rng.randrange(len(lines) + 1), line)
    return "\n".join(lines)


MUTATIONS = [
    (del_token, 6), (dup_token, 4), (swap_tokens, 4), (replace_token, 6), (extreme_number, 6), (huge_size, 5),
    (del_line, 3), (dup_line, 3), (swap_lines, 2), (move_line, 2), (del_char, 3), (dup_char, 2),
    (swap_chars, 2), (insert_char, 3), (truncate, 1), (lookalike, 6), (lookalike_twin, 3), (control_char, 6), (comment_noise, 2),
    (bom, 2), (bom_inside, 1), (crlf, 3), (lone_cr, 2), (mixed_newlines, 1), (whitespace, 2),
    (deep_nesting, 5), (deep_formula, 3), (odd_line, 8),
]
PRESERVING = {comment_noise, bom, crlf, whitespace, mixed_newlines}


# ---- bytes: invalid UTF-8 ------------------------------------------------------------------

BAD_BYTES = [b"\xff", b"\xfe\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80", b"\xe2\x82",
             b"\xff\xfe"]


def encode(text: str) -> bytes:
    # lone surrogates (\ud800 above) become bytes that are not UTF-8, as in a broken file
    return text.encode("utf-8", "surrogatepass")


# ---- file names ----------------------------------------------------------------------------

PAYLOAD_PY = '__import__("os").system("touch ' + SENTINEL + '")'
PAYLOAD_PY1 = "__import__('os').system('touch " + SENTINEL + "')"
HOSTILE_STEMS = [
    "model", "my model", "it's", 'say "hi"', 'a"""b', "a'''b", "end*", "*start", "a*/b", "x\\", "\\",
    "back\\slash", "\\N{BULLET}", "\\x41", "\\u0041", "\\U00000041", "\\0", "\\", "tab\tbed", "new\nline",
    "cr\rret", "-leading", "--double", "1digit", "123", "ｗｉｄｅ", "мир", "cafe\u0301", "ℌ", "x\u2028y",
    "x\u0085y", "x\x1b[31mred", "x\x7fy", "x\x01y", "\u202eevil", "🙂", "{{ 7*7 }}", "{% raw %}", "${HOME}",
    "$(touch " + SENTINEL + ")", "`touch " + SENTINEL + "`", "%s%n%d", "<script>alert(1)</script>", "&amp;",
    "a.b.c", " spaced ", ".hidden", "..", "con", "nul", "import", "class", "None", "np", "__init__",
    "main", "x" * 120, "e\u0301" * 20, "explain",
    'x"""+' + PAYLOAD_PY + '+"""', "x'''+" + PAYLOAD_PY1 + "+'''", 'x"+' + PAYLOAD_PY + '+"',
    "x\n" + PAYLOAD_PY + "\n", "x\\\n" + PAYLOAD_PY + "\n#", "x\r" + PAYLOAD_PY + "\r#",
    'x\\"""+' + PAYLOAD_PY + "#", "x\u2028" + PAYLOAD_PY, "x\x0c" + PAYLOAD_PY, "x\x0b" + PAYLOAD_PY,
    "x\x1c" + PAYLOAD_PY, "x\x85" + PAYLOAD_PY,
    '*/ int pwned = system("touch ' + SENTINEL + '"); /*', '*/\n#include "' + SENTINEL + '"\n/*',
    "x\\\nint " + SENTINEL + ";", '"; system("touch ' + SENTINEL + '"); "',
]
HOSTILE_DIRS = ["dir", "a*", "*b", "sp ace", 'q"uote', "new\nline", "ｗ", "-dash", "back\\", ".", "x.nn"]
SUFFIXES = [".nn", ".nn", ".nn", ".nn", "", ".NN", ".txt", ".nn.nn", ".py.nn", ".n n"]


def hostile_path(rng: random.Random) -> str:
    if rng.random() < 0.25:
        stem = "model"
    else:
        stem = rng.choice(HOSTILE_STEMS)
    path = stem + rng.choice(SUFFIXES)
    if path in (".", "..", "") or path.endswith(".py"):
        path = "model.nn"
    if rng.random() < 0.2:
        path = rng.choice(HOSTILE_DIRS) + "/" + path
    return path


# ---- a case --------------------------------------------------------------------------------

def make_case(rng: random.Random) -> Case:
    label, text = seed_program(rng)
    original = text
    how, preserving = [], True
    r = rng.random()
    n = 0 if r < 0.15 else 1 if r < 0.55 else rng.randint(2, 4)
    funcs, weights = zip(*MUTATIONS)
    for _ in range(n):
        f = rng.choices(funcs, weights)[0]
        text = f(rng, text)
        how.append(f.__name__)
        preserving = preserving and f in PRESERVING
    data = encode(text)
    if rng.random() < 0.02:
        i = rng.randrange(len(data) + 1)
        data = data[:i] + rng.choice(BAD_BYTES) + data[i:]
        how.append("bad_utf8")
        preserving = False
    return Case(data=data, path=hostile_path(rng), how=how, seed_name=label, preserving=preserving,
                original=original)


if __name__ == "__main__":  # print a few cases, to see what the mutations make
    import sys
    sys.path.insert(0, str(HERE))
    for k in range(int(sys.argv[1]) if len(sys.argv) > 1 else 5):
        c = make_case(random.Random(f"show:{k}"))
        print(f"--- {c.path!r} {c.how} from {c.seed_name}")
        print(c.data.decode("utf-8", "backslashreplace")[:600])
