#!/usr/bin/env python3
"""Flame graphs from `perf script` output, standard library only.

Usage:
    perf record -F 999 --call-graph dwarf,32768 -o perf.data -- CMD    (or -p PID; -g
        is enough for code built with frame pointers, atlasgate's Release build is not)
    perf script --no-inline -i perf.data | bench/flamegraph.py --title T -o out.svg
    bench/flamegraph.py [--title T] [--min-width PCT] [--folded-out F] [--inverted] [INPUT] -o OUT.svg
perf 6.1's script resolves inlined frames by running addr2line, which takes
minutes on a few thousand dwarf samples; --no-inline makes it take a second.

From Python (bench/run.py):  import flamegraph
    folded = flamegraph.fold(lines)         # any iterable of lines, e.g. a Popen's stdout
    svg = flamegraph.render(folded, "title")        # the SVG document, a str

Folding rules (those of Brendan Gregg's stackcollapse-perf.pl):
  * A sample starts with a header line `comm tid[/pid] [cpu] time: [period] event:`
    and is followed by its call chain, one `ip symbol+0xoff (dso)` line per
    frame, leaf first; a blank line ends it.  Without call graphs perf puts the
    single frame on the header line itself; that is accepted too.
  * Each sample counts 1 (not its period); only the first event name seen is
    counted, samples of other events are skipped.
  * A stack is written root first: the thread's comm, then the frames from the
    outermost caller to the leaf, joined by ';'.  Offsets (+0x..) are dropped.
  * Kernel frames (dso [kernel.kallsyms]) get the suffix `_[k]`.  An [unknown]
    symbol becomes `[its dso's file name]`, or `[unknown]` when that is unknown
    too.  Still-mangled names (_Z...) are demangled with c++filt if present.
  * `;` inside a name becomes `:` so that the folded format stays parseable.
A file that is already folded (`a;b;c 12` lines) is read as such.

Rendering: widths are proportional to samples; frames narrower than --min-width
percent of all samples are left out (and the limit is doubled until the SVG is
under ~1 MB).  Long C++ names are shortened for display only (template argument
lists deeper than --template-depth become <...>); the <title> tooltip keeps the
full name.  Colours tell the category: kernel orange, atlasgate:: green,
Boost.Asio/Beast blue, OpenSSL purple, libc/malloc grey-yellow, the rest red;
the shade within a category comes from a hash of the name, so it is stable.
A short script zooms into a frame on click (Escape or a click on the title
resets); the SVG reads fine without it.
"""
import argparse
import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
from xml.sax.saxutils import escape

HEADER_RE = re.compile(r"^\s*(?P<comm>\S.*?)\s+\d+(?:/\d+)?\s+(?:\[\d+\]\s+)?\d+\.\d+:\s+"
                       r"(?:\d+\s+)?(?P<event>\S+):(?:\s+(?P<rest>.*))?$")
FRAME_RE = re.compile(r"^\s*(?P<ip>[0-9a-fA-F]+)\s+(?P<sym>.*?)\s+\((?P<dso>[^()]*)\)\s*$")
FOLDED_RE = re.compile(r"^(?P<stack>\S.*)\s(?P<n>\d+)\s*$")
# splits a C++ name into brackets, operator<-like names (not brackets) and the rest
TOKEN_RE = re.compile(r"((?<!\w)operator\s*(?:<=>|<<=|>>=|<<|>>|<=|>=|->\*|->|<|>)|[<>])")
RETURN_TYPE_RE = re.compile(r"^((?:const )?[\w:]+(?:<…>[\w:]*)*(?: const)?[*&]*) (?=[\w~(])")  # no nested +


class Folded(dict):
    """fold()'s result: a plain {stack: samples} dict that also carries what
    the names alone don't say: .dso (frame name -> library file name, for
    colours) and .event (the perf event counted)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.dso, self.event = {}, None


def fold(lines):
    """Folds `perf script` lines (or already folded lines) into a Folded dict."""
    out, stack, comm, skip = Folded(), [], None, False

    def flush():
        if comm is not None and not skip:
            frames = [comm]
            for name, ip, dso in reversed(stack):                       # root first
                if dso == "inlined":        # takes the dso of the real frame at the same ip
                    dso = next((d for n, p, d in stack if p == ip and d != "inlined"), "")
                if dso:
                    out.dso.setdefault(name, os.path.basename(dso))
                frames.append(name)
            key = ";".join(frames)
            out[key] = out.get(key, 0) + 1

    for line in lines:
        line = line.rstrip("\n")
        if not line.strip() or line.startswith("#"):
            flush()
            comm = None
            continue
        h = HEADER_RE.match(line)
        if h:
            flush()
            comm, stack = h["comm"].replace(";", ":"), []
            out.event = out.event or h["event"]
            skip = h["event"] != out.event
            if h["rest"] and (f := FRAME_RE.match(h["rest"])):      # no call graph: frame on this line
                stack.append(frame(f))
            continue
        f = FRAME_RE.match(line) if comm is not None else None
        if f:
            stack.append(frame(f))
        elif comm is None and (m := FOLDED_RE.match(line)):         # already folded input
            out[m["stack"]] = out.get(m["stack"], 0) + int(m["n"])
    flush()
    demangle(out)
    return out


def frame(m):
    """(name, ip, dso) of one call-chain line, named as the folding rules say."""
    sym, dso = re.sub(r"\+0x[0-9a-fA-F]+$", "", m["sym"]), m["dso"]
    if sym == "[unknown]":
        sym = f"[{os.path.basename(dso)}]" if dso and dso != "[unknown]" else "[unknown]"
    elif dso.startswith("[kernel") or dso.startswith("[guest.kernel"):
        sym += "_[k]"
    return sym.replace(";", ":"), m["ip"], dso


def demangle(folded):
    """Demangles, in place and in one c++filt run, names perf left mangled."""
    names = sorted({f for k in folded for f in k.split(";") if f.startswith("_Z")})
    if not names or not shutil.which("c++filt"):
        return
    p = subprocess.run(["c++filt"], input="\n".join(names) + "\n", capture_output=True, text=True)
    table = dict(zip(names, p.stdout.splitlines()))
    for k in list(folded):
        if any(f in table for f in k.split(";")):
            folded[";".join(table.get(f, f) for f in k.split(";"))] = folded.pop(k)
    folded.dso.update({table[n]: d for n, d in list(folded.dso.items()) if n in table})


@functools.lru_cache(maxsize=1 << 16)
def shorten(name, depth=0):
    """Display form of a frame name: template argument lists nested deeper than
    `depth` become <…> (and at depth 0 a leading return type goes),
    std::__cxx11:: becomes std::, the _[k] suffix goes."""
    name = name.removesuffix("_[k]").replace("std::__cxx11::", "std::")
    name = name.replace("(anonymous namespace)", "(anon)")
    out, level = [], 0
    for tok in TOKEN_RE.split(name):
        if tok == "<":
            level += 1
            if level <= depth + 1:
                out.append("<" if level <= depth else "<…>")
        elif tok == ">" and level > 0:
            if level <= depth:
                out.append(">")
            level -= 1
        elif level <= depth:
            out.append(tok)
    out = "".join(out)
    # at depth 0, drop the return type that demangled template functions carry
    m = RETURN_TYPE_RE.match(out) if depth == 0 else None
    return out[m.end():] if m and not m.group(1).endswith("operator") else out


# category -> (base RGB, RGB added as the name's hash goes from 0 to 1)
PALETTE = {
    "kernel": ((235, 135, 0), (20, 55, 50)),
    "atlasgate": ((60, 170, 60), (60, 60, 50)),
    "Boost.Asio/Beast": ((70, 120, 210), (60, 70, 45)),
    "OpenSSL": ((150, 90, 200), (50, 50, 50)),
    "libc/malloc": ((185, 180, 100), (45, 45, 40)),
    "other": ((200, 40, 40), (55, 70, 50)),
}
OPENSSL_NAMES = re.compile(r"^(SSL_|ssl3_|tls1?3?_|dtls1_|EVP_|ossl_|OSSL_|CRYPTO_|OPENSSL_|BIO_|ERR_|"
                           r"aesni_|gcm_(gmult|ghash)|sha(1|256|512)_block|ChaCha20|Poly1305)")
LIBC_DSO = re.compile(r"^(libc[.-]|ld-linux|libpthread|libm[.-]|\[vdso\])")
LIBC_NAMES = re.compile(r"^(__libc_|_int_|__GI_|malloc|free|calloc|realloc|cfree|tcache|unlink_chunk|"
                        r"__mem|mem(cpy|move|set|cmp|chr)|__str|str(len|cmp|chr)|operator (new|delete))")


def tail(label):
    """The last two parts of a qualified name (`Class<…>::method`): what a
    frame shows when its whole name doesn't fit."""
    depth, cuts = 0, []
    for i, c in enumerate(label):
        if c in "([{<":
            depth += 1
        elif c in ")]}>":
            depth = max(depth - 1, 0)
        elif c == ":" and depth == 0 and label.startswith("::", i) and not (cuts and cuts[-1] == i - 1):
            cuts.append(i)
    return label[cuts[-2] + 2:] if len(cuts) >= 2 else label


def category(name, dso=""):
    """Colour category of a frame, from its name with the template arguments
    taken out (so std::function<atlasgate::X> is not atlasgate's) and its dso."""
    top = shorten(name, 0)
    if name.endswith("_[k]") or dso.startswith("[kernel"):
        return "kernel"
    if "atlasgate::" in top:
        return "atlasgate"
    if "boost::asio::" in top or "boost::beast::" in top:
        return "Boost.Asio/Beast"
    if dso.startswith(("libssl", "libcrypto")) or OPENSSL_NAMES.match(top) or top.startswith(
            ("[libssl", "[libcrypto")):
        return "OpenSSL"
    if LIBC_DSO.match(dso) or LIBC_NAMES.match(top) or top.startswith("[libc"):
        return "libc/malloc"
    return "other"


def colour(name, cat):
    """A stable shade of the category's colour for `name`."""
    h = hashlib.md5(name.encode("utf-8", "replace")).digest()
    base, span = PALETTE[cat]
    return "rgb({},{},{})".format(*(min(255, b + s * h[i] // 255) for i, (b, s) in enumerate(zip(base, span))))


def attr(s):
    """Text safe in XML content and in "-quoted attributes (control chars dropped)."""
    s = re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f]", "?", s)
    return escape(s, {'"': "&quot;", "'": "&apos;"})


ZOOM_JS = """<script type="text/ecmascript"><![CDATA[
var fs = document.querySelectorAll("g.f"), P = %(pad)s, W = %(inner)s, C = %(cw)s;
function fit(l, t, w) {
  var n = Math.floor((w - 6) / C);
  return l.length <= n ? l : t.length <= n ? t : n < 3 ? "" : t.slice(0, n - 2) + "..";
}
function num(g, a) { return +g.getAttribute("data-" + a); }
function zoom(z) {
  var s0 = z ? num(z, "s") : 0, n0 = z ? num(z, "n") : num(fs[0], "n"), d0 = z ? num(z, "d") : 0;
  fs.forEach(function (g) {
    var s = num(g, "s"), n = num(g, "n"), d = num(g, "d"), x, w, inside = s >= s0 && s + n <= s0 + n0;
    if (d < d0 && s <= s0 && s + n >= s0 + n0) { x = P; w = W; g.style.opacity = 0.6; }
    else if (d >= d0 && inside) { x = P + (s - s0) * W / n0; w = n * W / n0; g.style.opacity = 1; }
    else { g.style.display = "none"; return; }
    g.style.display = ""; var r = g.firstElementChild.nextElementSibling, t = r.nextElementSibling;
    r.setAttribute("x", x.toFixed(1)); r.setAttribute("width", Math.max(w - 0.5, 0.1).toFixed(1));
    t.setAttribute("x", (x + 3).toFixed(1)); var l = g.getAttribute("data-l");
    t.textContent = fit(l, g.getAttribute("data-t") || l, w);
  });
}
fs.forEach(function (g) { g.addEventListener("click", function () { zoom(g); }); });
document.getElementById("title").addEventListener("click", function () { zoom(null); });
document.addEventListener("keydown", function (e) { if (e.key === "Escape") zoom(null); });
]]></script>
"""


def render(folded, title="Flame Graph", *, min_width=0.1, width=1200, inverted=False, template_depth=0,
           zoom=True, subtitle=None, dso=None, max_bytes=1_000_000):
    """SVG flame graph (a str) of a {"a;b;c": samples} dict.

    min_width: percent of all samples under which a frame (and what it calls) is
    not drawn; doubled until the document is under max_bytes.  inverted: icicle
    (root at the top) instead of flame (root at the bottom).  template_depth:
    template nesting kept in labels.  zoom: include the click-to-zoom script.
    subtitle: replaces "N samples of EVENT".  dso: frame name -> library file
    name, defaults to folded.dso when fold() made it."""
    dso = dso if dso is not None else getattr(folded, "dso", {})
    total = sum(folded.values())
    if total <= 0:
        raise ValueError("render: no samples")
    # the call tree: node = [samples, {child name: node}]; children drawn in name order
    root = [total, {}]
    for stack, n in folded.items():
        node = root
        for name in stack.split(";"):
            node = node[1].setdefault(name, [0, {}])
            node[0] += n
    if subtitle is None:
        event = getattr(folded, "event", None)
        subtitle = f"{total:,} samples" + (f" of {event}" if event else "")
    while True:     # _draw gives up (None) as soon as the document outgrows the limit
        limit = max_bytes if min_width < 5 else float("inf")
        svg = _draw(root, total, title, subtitle, min_width, width, inverted, template_depth, zoom, dso, limit)
        if svg is not None:
            return svg
        min_width *= 2


def _draw(root, total, title, subtitle, min_width, width, inverted, template_depth, zoom, dso, limit):
    pad, fh, fs = 10, 16, 12                    # side margin, frame height, font size
    cw = fs * 0.59                              # mean glyph width of Verdana at that size
    inner = width - 2 * pad
    keep = max(total, 1) * min_width / 100
    frames, stack = [], [("all", root, 0, 0)]   # (name, node, first sample, depth)
    while stack:
        name, (n, kids), s, d = stack.pop()
        frames.append((name, n, s, d))
        drawn = []
        for child in sorted(kids):              # offsets count the omitted siblings too
            if kids[child][0] >= keep:
                drawn.append((child, kids[child], s, d + 1))
            s += kids[child][0]
        stack.extend(reversed(drawn))
    depth = max(d for *_, d in frames) + 1
    top, legend_h = 60, 24                      # title block, legend line
    height = top + depth * fh + legend_h + pad
    out = [f'<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n'
           f'<svg version="1.1" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'xmlns="http://www.w3.org/2000/svg">\n'
           f'<style>text {{ font-family: Verdana, "DejaVu Sans", sans-serif; font-size: {fs}px; fill: #000 }}\n'
           f'g.f {{ cursor: pointer }} g.f:hover rect {{ stroke: #000; stroke-width: 0.5 }}\n'
           f'#title {{ font-size: 17px; cursor: pointer }} .sub {{ fill: #555 }}</style>\n'
           f'<rect width="100%" height="100%" fill="#f8f8f2"/>\n'
           f'<text id="title" x="{width / 2}" y="24" text-anchor="middle">{attr(title)}</text>\n'
           f'<text class="sub" x="{width / 2}" y="44" text-anchor="middle">{attr(subtitle)}; '
           f'frames under {min_width:g}% of samples omitted; hover for names, click to zoom</text>\n']
    size = 4000                                 # head, legend and script
    for name, n, s, d in frames:
        x, w = pad + s * inner / total, n * inner / total
        y = top + (d if inverted else depth - 1 - d) * fh
        label = shorten(name, template_depth) if d else f"all ({total:,} samples)"
        short, chars = tail(label), int((w - 6) // cw)     # as fit() in ZOOM_JS
        text = (label if len(label) <= chars else short if len(short) <= chars else
                "" if chars < 3 else short[:chars - 2] + "..")
        cat = "other" if d == 0 else category(name, dso.get(name, ""))
        fill = "rgb(200,200,200)" if d == 0 else colour(name, cat)
        out.append(f'<g class="f" data-s="{s}" data-n="{n}" data-d="{d}" data-l="{attr(label)}"'
                   + (f' data-t="{attr(short)}">' if short != label else ">") +
                   f'<title>{attr(name)} ({n:,} samples, {100 * n / total:.2f}%; {cat})</title>'
                   f'<rect x="{x:.1f}" y="{y}" width="{max(w - 0.5, 0.1):.1f}" height="{fh - 1}" rx="2" '
                   f'fill="{fill}"/><text x="{x + 3:.1f}" y="{y + fh - 4}">{attr(text)}</text></g>\n')
        size += len(out[-1].encode())
        if size > limit:
            return None
    # legend: one swatch per category
    x, y = pad, height - pad - 14
    for cat, (base, span) in PALETTE.items():
        rgb = ",".join(str(b + s // 2) for b, s in zip(base, span))
        out.append(f'<rect x="{x}" y="{y}" width="14" height="14" fill="rgb({rgb})"/>'
                   f'<text x="{x + 19}" y="{y + 12}">{attr(cat)}</text>\n')
        x += 30 + int(len(cat) * cw)
    if zoom:
        out.append(ZOOM_JS % {"pad": pad, "inner": inner, "cw": cw})
    out.append("</svg>\n")
    return "".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", nargs="?", default="-", help="perf script output or folded stacks (default stdin)")
    ap.add_argument("-o", "--output", required=True, help="SVG file to write")
    ap.add_argument("--title", default="Flame Graph")
    ap.add_argument("--min-width", type=float, default=0.1, help="percent of samples (default 0.1)")
    ap.add_argument("--folded-out", help="also write the folded stacks here")
    ap.add_argument("--inverted", action="store_true", help="icicle graph: root at the top")
    ap.add_argument("--width", type=int, default=1200)
    ap.add_argument("--template-depth", type=int, default=0, help="template nesting shown in labels")
    ap.add_argument("--no-zoom", action="store_true", help="leave out the click-to-zoom script")
    a = ap.parse_args(argv)
    with open(sys.stdin.fileno() if a.input == "-" else a.input, errors="replace") as f:
        folded = fold(f)
    if not folded:
        sys.exit("flamegraph.py: no samples found in the input")
    if a.folded_out:
        with open(a.folded_out, "w") as f:
            f.writelines(f"{k} {v}\n" for k, v in sorted(folded.items()))
    svg = render(folded, a.title, min_width=a.min_width, width=a.width, inverted=a.inverted,
                 template_depth=a.template_depth, zoom=not a.no_zoom)
    with open(a.output, "w") as f:
        f.write(svg)


if __name__ == "__main__":
    main()
