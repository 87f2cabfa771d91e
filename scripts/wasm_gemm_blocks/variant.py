"""Writes variant/gemm-f32: vendor/gemm-f32 with its wasm simd128 register
blocks replaced by ROWSxCOLS (ROWS a multiple of 4) and the k loop unrolled
UNROLL times.   python3 variant.py ROWS COLS UNROLL"""
import re
import shutil
import sys
from pathlib import Path

here = Path(__file__).parent
rows, cols, unroll = (int(a) for a in sys.argv[1:4])
out = here / "variant" / "gemm-f32"
shutil.rmtree(out, ignore_errors=True)
shutil.copytree(here / "../../vendor/gemm-f32", out)
path = out / "src" / "microkernel.rs"
text = path.read_text()
start = text.index("pub mod simd128")
body = text[start:]
first = body.index("        macro_rules! blocks {")
end = body.index("        pub const H_M")
invocations = "".join(f'                microkernel!([$target], {unroll}, x{m}x{n}, {m}, {n});\n'
                      for m in range(1, rows // 4 + 1) for n in range(1, cols + 1))
blocks = ("        macro_rules! blocks {\n            ($target: tt) => {\n" + invocations + "            };\n        }\n"
          '        #[cfg(not(feature = "wasm-relaxed-simd"))]\n        blocks!("simd128");\n'
          '        #[cfg(feature = "wasm-relaxed-simd")]\n        blocks!("simd128,relaxed-simd");\n')
table = "        microkernel_fn_array! {\n" + "".join(
    "            [" + " ".join(f"x{m}x{n}," for n in range(1, cols + 1)) + "],\n"
    for m in range(1, rows // 4 + 1)) + "        }\n\n"
# Drop the comment above the blocks too (it describes the vendored choice).
head = re.sub(r"(\n        // Changed for this repository[^\n]*\n(        //[^\n]*\n)*)$", "\n", body[:first])
path.write_text(text[:start] + head + blocks + "\n" + table + body[end:])
