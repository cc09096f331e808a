#!/usr/bin/env python3
"""Generate Tables.generated.swift from opcodes.tsv (the decoder's one source of truth).

Run from this directory:  python3 gen_tables.py
Output: the Mnemonic enum, the operand-spec codes, and flat decision-tree tables:
  root[map*256+opcode] -> node; a node is a leaf (a form) or a switch on one property of the
  instruction (mode, mandatory prefix, ModRM.mod/reg/rm, W, L, operand/address size) whose
  children are contiguous. The decoder walks at most a handful of nodes per instruction.
"""
import os, re, sys

HERE = os.path.dirname(os.path.abspath(__file__))
MAPS = {"-": 0, "0f": 1, "0f38": 2, "0f3a": 3, "0f0f": 4,
        "v1": 5, "v2": 6, "v3": 7, "e1": 8, "e2": 9, "e3": 10, "e5": 11, "e6": 12,
        "x8": 13, "x9": 14, "xa": 15}
NMAPS = 16
CC = ["o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g"]

# Operand kinds (first letters) and sizes; the Swift side switches on these codes.
KINDS = ["E", "G", "M", "R", "S", "C", "D", "Z", "I", "J", "O", "A", "X", "Y", "N", "P", "Q",
         "U", "V", "W", "H", "B", "L", "kG", "kE", "kH", "kR", "fixed"]
SIZES = ["", "b", "w", "d", "q", "v", "z", "y", "p", "s", "a", "x", "dq", "qq", "ps", "pd",
         "ss", "sd", "t", "m", "e", "f", "h", "bs", "512", "dqq", "o", "xq"]
FIXED = ["AL", "CL", "DX", "rAX", "eAX", "AX", "ST", "STi", "1", "ES", "CS", "SS", "DS", "FS", "GS",
         "XMM0"]
ATTRS = ["lock", "rep", "repe", "d64", "f64", "near", "sse", "evex", "vex", "xop", "nolegacy66"]
# switch kinds in the order the tree tests them, with their child counts
SWITCHES = [("mode64", 2), ("prefix", 4), ("mod", 2), ("reg", 8), ("rm", 8), ("w", 2), ("l", 3),
            ("os", 3), ("as", 3)]
# an "os" switch over forms that default to 64-bit operands in 64-bit mode is emitted as kind osd64
PFX = {"np": 0, "66": 1, "f3": 2, "f2": 3}
SZI = {"16": 0, "32": 1, "64": 2}

def swift_ident(m):
    return "`%s`" % m if m in ("in", "init", "is", "as", "do", "if", "for", "return", "repeat") else m

class Line:
    pass

def parse_operand(tok):
    if tok in FIXED:
        return ("fixed", tok)
    k = "k" + tok[1] if tok.startswith("k") else tok[0]
    rest = tok[len(k):]
    if k not in KINDS or rest not in SIZES:
        raise ValueError("bad operand %r" % tok)
    return (k, rest)

SSE_KINDS = {"N", "P", "Q", "U", "V", "W", "H", "L"}

extra_mnemonics = []

def parse(path):
    lines = []
    for no, raw in enumerate(open(path), 1):
        raw = raw.split("#", 1)[0].strip()
        if not raw:
            continue
        f = raw.split()
        if len(f) < 3:
            sys.exit("%s:%d: too few fields" % (path, no))
        if f[0] == "=":
            # "= name ...": mnemonics the decoder produces by a documented rule rather than a table row
            extra_mnemonics.extend(f[1:])
            continue
        mp, opc, mn = f[0], f[1], f[2]
        ops = f[3] if len(f) > 3 else "-"
        rest = f[4:]
        try:
            operands = [] if ops == "-" else [parse_operand(t) for t in ops.split(",")]
        except ValueError as e:
            sys.exit("%s:%d: %s" % (path, no, e))
        cond, attrs = {}, set()
        for t in rest:
            if re.fullmatch(r"/[0-7]", t): cond["reg"] = int(t[1])
            elif t == "mem": cond["mod"] = 0
            elif t == "reg": cond["mod"] = 1
            elif t.startswith("rm="): cond["rm"] = int(t[3:])
            elif t.startswith("modrm="):
                b = int(t[6:], 16); cond["mod"] = 1 if b >> 6 == 3 else sys.exit("%s:%d: modrm= needs mod 3" % (path, no))
                cond["reg"] = (b >> 3) & 7; cond["rm"] = b & 7
            elif t.startswith("p="): cond["prefix"] = PFX[t[2:]]
            elif t == "o64": cond["mode64"] = 1
            elif t == "i64": cond["mode64"] = 0
            elif t.startswith("os="): cond["os"] = SZI[t[3:]]
            elif t.startswith("as="): cond["as"] = SZI[t[3:]]
            elif t in ("w0", "w1"): cond["w"] = int(t[1])
            elif t in ("l0", "l1", "l2"): cond["l"] = int(t[1])
            elif t in ("+v", "+e", "+ve"): attrs.add(t)
            elif t in ATTRS: attrs.add(t)
            else: sys.exit("%s:%d: unknown attribute %r" % (path, no, t))
        if mp not in MAPS:
            sys.exit("%s:%d: unknown map %r" % (path, no, mp))
        # expand +r / +cc
        opcodes = []
        m = re.fullmatch(r"([0-9a-f]{2})(\+r|\+cc)?", opc)
        if not m:
            sys.exit("%s:%d: bad opcode %r" % (path, no, opc))
        base = int(m.group(1), 16)
        if m.group(2) == "+r":
            opcodes = [(base + i, mn) for i in range(8)]
        elif m.group(2) == "+cc":
            opcodes = [(base + i, mn.replace("cc", CC[i])) for i in range(16)]
        else:
            opcodes = [(base, mn)]
        for (o, name) in opcodes:
            variants = []
            legacy_map = MAPS[mp]
            if "+v" in attrs or "+e" in attrs or "+ve" in attrs:
                # an SSE/AVX line written once in its VEX shape: the legacy form drops the "v" and H
                assert mp in ("0f", "0f38", "0f3a"), "%s:%d: +v only on 0f maps" % (path, no)
                lops = [x for x in operands if x[0] not in ("H",)]
                lname = name[1:] if name.startswith("v") else name
                lcond = {k: v for k, v in cond.items() if k != "l"}
                variants.append((legacy_map, lname, lops, lcond, attrs | {"sse"}))
                if "+v" in attrs or "+ve" in attrs:
                    variants.append((legacy_map + 4, name, operands, cond, attrs | {"vex"}))
                if "+e" in attrs or "+ve" in attrs:
                    variants.append((legacy_map + 7, name, operands, {k: v for k, v in cond.items() if k != "l"}, attrs | {"evex"}))
            else:
                a = set(attrs)
                if 5 <= legacy_map <= 7: a.add("vex")
                if 8 <= legacy_map <= 12: a.add("evex")
                if 13 <= legacy_map: a.add("xop")
                if any(x[0] in SSE_KINDS for x in operands): a.add("sse")
                variants.append((legacy_map, name, operands, cond, a))
            for (mpi, nm, ops_, cd, at) in variants:
                L = Line()
                L.map, L.opcode, L.mnemonic, L.operands, L.cond, L.attrs, L.src = mpi, o, nm, ops_, dict(cd), at, "%s:%d" % (os.path.basename(path), no)
                lines.append(L)
    return lines

def needs_modrm(L):
    if L.map == 5 and L.opcode == 0x77: return False  # vzeroupper / vzeroall
    if L.map >= 5: return True  # VEX/EVEX/XOP: every other opcode has ModRM
    if any(k in ("reg", "mod", "rm") for k in L.cond): return True
    return any(k in ("E", "G", "M", "R", "S", "C", "D", "N", "P", "Q", "U", "V", "W", "kG", "kE", "kR") or (k == "fixed" and s == "STi") for (k, s) in L.operands)

def main():
    lines = parse(os.path.join(HERE, "opcodes.tsv"))
    mnemonics = ["invalid"]
    for L in lines:
        if L.mnemonic not in mnemonics:
            mnemonics.append(L.mnemonic)
    mnemonics = ["invalid"] + sorted(set(mnemonics + extra_mnemonics) - {"invalid"})
    mindex = {m: i for i, m in enumerate(mnemonics)}
    kindex = {k: i for i, k in enumerate(KINDS)}
    sindex = {s: i for i, s in enumerate(SIZES)}
    findex = {s: i for i, s in enumerate(FIXED)}

    forms, formkey = [], {}
    def form_of(L):
        ops = []
        for (k, s) in L.operands:
            ops.append((kindex[k] << 8) | (findex[s] if k == "fixed" else sindex[s]))
        fl = 0
        for a in L.attrs:
            if a in ATTRS: fl |= 1 << ATTRS.index(a)
        key = (mindex[L.mnemonic], tuple(ops), fl)
        if key not in formkey:
            formkey[key] = len(forms); forms.append(key)
        return formkey[key]

    nodes = [(0, 0)]  # (kind, arg); node 0 = invalid. kind 0 invalid, 1 leaf, 2 leaf consuming 66, 3+ switches
    def specificity(L):
        return len(L.cond)
    def build(prim, fb, sw_i, consumed66):
        if sw_i == len(SWITCHES):
            cand = prim if prim else fb
            if not cand: return 0
            cand = sorted(cand, key=specificity, reverse=True)
            if len(cand) > 1 and specificity(cand[0]) == specificity(cand[1]) and form_of(cand[0]) != form_of(cand[1]):
                sys.exit("ambiguous: %s %s vs %s %s" % (cand[0].src, cand[0].mnemonic, cand[1].src, cand[1].mnemonic))
            L = cand[0]
            nodes.append((2 if (prim and L.cond.get("prefix") == 1) else 1, form_of(L)))
            return len(nodes) - 1
        name, count = SWITCHES[sw_i]
        if not any(name in L.cond for L in prim + fb):
            return build(prim, fb, sw_i + 1, consumed66)
        children = []
        for v in range(count):
            p = [L for L in prim if L.cond.get(name, v) == v]
            f = [L for L in fb if L.cond.get(name, v) == v]
            if name == "prefix" and v != 0:
                has_explicit = any(L.cond.get("prefix") == v for L in p)
                if not has_explicit:
                    # a prefix the opcode does not define: ignored (66 as operand size, F2/F3 as REP)
                    # unless the no-prefix form is an SSE/MMX one
                    f = f + [L for L in prim if L.cond.get("prefix") == 0 and "sse" not in L.attrs and L.map < 5]
            children.append(build(p, f, sw_i + 1, consumed66))
        if all(c == children[0] for c in children):
            return children[0]
        base = len(nodes)
        nodes.extend([None] * count)
        for i, c in enumerate(children):
            nodes[base + i] = nodes[c] if c else (0, 0)
        kind = 3 + sw_i
        if name == "os" and all(("d64" in L.attrs or "near" in L.attrs or "f64" in L.attrs) for L in prim + fb):
            kind = 3 + len(SWITCHES)
        # W choosing between 32- and 64-bit general registers (vmovd/vmovq, vpextrd/q...): outside
        # 64-bit mode W is ignored there, so it is emitted as kind wgpr
        if name == "w" and any(k in ("E", "G", "R", "B") and sz in ("d", "q") for L in prim + fb for (k, sz) in L.operands):
            kind = 4 + len(SWITCHES)
        nodes.append((kind, base))
        return len(nodes) - 1

    root = [0] * (NMAPS * 256)
    modrm = [0] * (NMAPS * 256)
    bymap = {}
    for L in lines:
        bymap.setdefault(L.map * 256 + L.opcode, []).append(L)
    for key, ls in sorted(bymap.items()):
        root[key] = build(ls, [], 0, False)
        mr = {needs_modrm(L) for L in ls}
        if len(mr) != 1:
            sys.exit("map %d opcode %02x: ModRM presence differs between lines %s" % (key >> 8, key & 255, [L.src for L in ls]))
        modrm[key] = 1 if mr.pop() else 0

    out = []
    w = out.append
    w("// GENERATED by gen_tables.py from opcodes.tsv. Do not edit; edit the table and re-run.")
    w("")
    w("/// Instruction mnemonics, lowercase Intel names (string instructions by their generic names:")
    w("/// `movs`, `stos`, `ins`, `outs`...; condition codes as in the AMD APM: `jb`, `cmovne`, `setg`).")
    w("public enum Mnemonic: UInt16, Sendable, CaseIterable {")
    for i, m in enumerate(mnemonics):
        w("    case %s = %d" % (swift_ident(m), i))
    w("")
    w("    /// The mnemonic as written in assembly.")
    w("    public var name: String { mnemonicNames[Int(rawValue)] }")
    w("}")
    w("")
    w("let mnemonicNames: [String] = [")
    for i in range(0, len(mnemonics), 8):
        w("    " + ", ".join('"%s"' % m for m in mnemonics[i:i + 8]) + ",")
    w("]")
    w("")
    w("/// Operand kinds of the opcode table (AMD APM / Intel SDM appendix A letters).")
    w("enum OperandKind: UInt8 {")
    for i, k in enumerate(KINDS):
        w("    case %s = %d" % (k, i))
    w("}")
    w("")
    w("/// Operand size codes of the opcode table.")
    w("enum OperandSizeCode: UInt8 {")
    for i, s in enumerate(SIZES):
        w("    case %s = %d" % ("none" if s == "" else ("s" + s if s[0].isdigit() else s), i))
    w("}")
    w("")
    w("/// Fixed operands of the opcode table.")
    w("enum FixedOperand: UInt8 {")
    for i, s in enumerate(FIXED):
        w("    case %s = %d" % ({"1": "one", "STi": "sti", "ST": "st"}.get(s, s), i))
    w("}")
    w("")
    w("/// Form attribute bits.")
    w("enum FormAttr {")
    for i, a in enumerate(ATTRS):
        w("    static let %s: UInt16 = 1 << %d" % (a + ("_" if a in ("rep",) else ""), i))
    w("}")
    w("")
    w("enum DecodeNodeKind {")
    w("    static let osd64: UInt8 = %d" % (3 + len(SWITCHES)))
    w("    static let wgpr: UInt8 = %d" % (4 + len(SWITCHES)))
    w("    static let invalid: UInt8 = 0, leaf: UInt8 = 1, leafMandatory66: UInt8 = 2")
    for i, (n, c) in enumerate(SWITCHES):
        w("    static let %s: UInt8 = %d" % ({"as": "adsize"}.get(n, n), 3 + i))
    w("}")
    w("")
    def arr(name, typ, vals, per=16):
        w("let %s: [%s] = [" % (name, typ))
        for i in range(0, len(vals), per):
            w("    " + ", ".join(str(v) for v in vals[i:i + per]) + ",")
        w("]")
        w("")
    arr("tableRoot", "UInt16", root, 32)
    arr("tableHasModRM", "UInt8", modrm, 64)
    # a node is one word: kind << 16 | argument (child base or form index)
    arr("tableNode", "UInt32", ["0x%x" % (k << 16 | a) for (k, a) in nodes], 16)
    arr("tableFormMnemonic", "UInt16", [f[0] for f in forms], 32)
    arr("tableFormOperands", "UInt64", ["0x%x" % sum(((o) << (16 * i)) for i, o in enumerate(f[1])) for f in forms], 8)
    # attribute bits 0-12, operand count in bits 13-15
    arr("tableFormAttrs", "UInt16", [f[2] | (len(f[1]) << 13) for f in forms], 32)
    open(os.path.join(HERE, "Tables.generated.swift"), "w").write("\n".join(out) + "\n")
    print("%d lines, %d mnemonics, %d forms, %d nodes" % (len(lines), len(mnemonics), len(forms), len(nodes)), file=sys.stderr)

main()
