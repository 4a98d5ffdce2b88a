"""The offline GPU check kit: what `scripts/gpu_check.sh` needs on an air-gapped CUDA box, in one carried folder.

    .gpu-kit/  (git-ignored; the device tool carries it beside the repository, 64 MiB for both)
      wheels/         llama-cpp-python 0.3.36 compiled with CUDA for sm_90 (scripts/gpu_kit_wheel.sh), and the
                      pure-Python wheels the box lacks (KIT_WHEELS); installed there with `pip install --no-index`
      tiny/, bench/   checkpoint skeletons (benchmarks/synthetic.py): configs, tokenizer, tensor layout, no weights;
                      the box draws the weights from a seed, since its transformers predates EXAONE 4.5
      vision-fp32/, vision-int8w/   the tiny model's vision exports, made and validated here
      kit.json        contents, sizes, the CUDA wheel's build time
Build here: .venv/bin/python benchmarks/gpu_kit.py build            (heavy imports inside `build`)
On the box: python3 benchmarks/gpu_kit.py install --kit .gpu-kit --site /tmp/exaone-edge-site   (stdlib only)
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KIT_DIR = REPO / ".gpu-kit"
CARRY_LIMIT = 64 * 2**20  # the device tool's limit on the working tree, carried paths included
WHEEL_CACHE = Path(os.environ.get("EXAONE_EDGE_WHEELS", Path.home() / ".cache/exaone-edge/wheels"))
CUDA_WHEEL_GLOB = "cuda-sm90/llama_cpp_python-0.3.36-*.whl"
KIT_WHEEL_DIR = "kit-py312"
LLAMA_SRC = "llama-src.tar.gz"  # the trimmed sdist (trim_sdist), carried only when no CUDA wheel was built
SDIST = Path("/tmp/exaone-edge-cuda-build/llama_cpp_python-0.3.36.tar.gz")  # where gpu_kit_wheel.sh downloads it  # the pure wheels, cached apart from setup.sh's --find-links folder
# What the GPU box's Python (KINDS.md's package list) lacks for the check: llama-cpp-python needs diskcache, the
# bundle build needs gguf. numpy, ml-dtypes, safetensors, tokenizers, pillow, jinja2, rich, onnxruntime are there.
KIT_WHEELS = {"diskcache": "5.6.3", "gguf": "0.19.0"}
PY312 = ["--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
         "--platform", "manylinux2014_x86_64", "--platform", "any"]
MIB = 2**20


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file() and not p.is_symlink())


def travel_bytes(repo: Path = REPO) -> int | None:
    """Bytes of the repository's files that travel to the device (tracked, and untracked but not ignored); None
    without git (on the box the copy has no .git)."""
    try:
        listed = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    files = {repo / name for name in listed.decode().split("\0") if name}
    return sum(f.stat().st_size for f in files if f.is_file() and not f.is_symlink())


def stage_package(repo: Path, site: Path) -> Path:
    """Lay the repository's packages out as they install (pyproject's package-dir: export/ → exaone_edge/export/ …)
    under `site`, so `python -m exaone_edge...` runs from a plain PYTHONPATH with no pip and no build backend."""
    tool = tomllib.loads((repo / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    mapping: dict[str, str] = tool["package-dir"]
    data: dict[str, list[str]] = tool.get("package-data", {})
    for package in tool["packages"]:
        parent = max((name for name in mapping if package == name or package.startswith(name + ".")), key=len)
        source = repo / mapping[parent] / package[len(parent):].lstrip(".").replace(".", "/")
        target = site / package.replace(".", "/")
        target.mkdir(parents=True, exist_ok=True)
        for path in source.glob("*.py"):
            shutil.copy2(path, target / path.name)
        for pattern in data.get(package, []):
            for path in source.glob(pattern):
                if path.is_file():
                    (target / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, target / path.relative_to(source))
    return site


def install(kit: Path, site: Path, python: str = sys.executable, repo: Path = REPO, extra: tuple[Path, ...] = ()) -> dict:
    """pip install --no-index: the CUDA llama-cpp-python into site/cuda (on the path only where a GPU is), the pure
    wheels and the staged repository into site/pure. Prints and returns the kit's size."""
    kit, site = Path(kit), Path(site)
    if not (kit / "kit.json").is_file():
        raise SystemExit(f"gpu_kit: {kit}/kit.json not found: build the kit first "
                         "(.venv/bin/python benchmarks/gpu_kit.py build), then carry it")
    shutil.rmtree(site, ignore_errors=True)
    wheels = sorted((kit / "wheels").glob("*.whl")) + [Path(w) for w in extra]  # extra: a wheel built on the box
    groups = {"cuda": [w for w in wheels if w.name.startswith("llama_cpp_python")],
              "pure": [w for w in wheels if not w.name.startswith("llama_cpp_python")]}
    env = dict(os.environ, PIP_CONFIG_FILE=os.devnull, PIP_NO_INPUT="1")  # nothing but the kit's own files
    for group, files in groups.items():
        (site / group).mkdir(parents=True, exist_ok=True)
        if files:
            subprocess.run([python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                            "--no-cache-dir", "--disable-pip-version-check", "--target", str(site / group),
                            *map(str, files)], check=True, env=env)
    stage_package(repo, site / "pure")
    recorded = json.loads((kit / "kit.json").read_text(encoding="utf-8"))
    size = tree_bytes(kit)
    repo_bytes = recorded.get("repo_bytes") or 0
    print(f"gpu_kit: installed offline (pip --no-index) {', '.join(w.name for w in wheels) or 'no wheels'}")
    print(f"gpu_kit: kit {size / MIB:.1f} MiB + repository {repo_bytes / MIB:.1f} MiB (measured at build) = "
          f"{(size + repo_bytes) / MIB:.1f} MiB carried (limit {CARRY_LIMIT / MIB:.0f} MiB)")
    return {"kit_bytes": size, "repo_bytes": repo_bytes, "wheels": [w.name for w in wheels],
            "cuda_wheel": bool(groups["cuda"])}


# llama-cpp-python's ctypes loads lib/libllama.so and lib/libggml.so; the rest load by their sonames (readelf -d).
# scikit-build-core stores every symlink (libX.so, .so.0, .so.0.25.3) as a copy, and llama.cpp's own install rules
# add a second set, headers and the unused libllama-common under lib/ and include/: six copies of libggml-cuda.
KEPT_LIBRARIES = ("libllama.so", "libggml.so", "libggml.so.0", "libggml-base.so.0", "libggml-cpu.so.0",
                  "libggml-cuda.so.0")


def slim_wheel(source: Path, target: Path, build_tag: str | None = None) -> Path:
    """A copy of a llama-cpp-python wheel with one copy of each library it loads (KEPT_LIBRARIES), its Python
    package and metadata, and a RECORD that matches; `build_tag` goes into WHEEL (and belongs in the file name)."""
    def keep(name: str) -> bool:
        if name.startswith("llama_cpp/lib/"):
            return name.rsplit("/", 1)[1] in KEPT_LIBRARIES
        return name.startswith(("llama_cpp/", "llama_cpp_python-")) and not name.endswith("/RECORD")

    record: list[str] = []
    partial = Path(f"{target}.partial")
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as new:
        record_name = next(name for name in old.namelist() if name.endswith(".dist-info/RECORD"))
        for info in old.infolist():
            if not keep(info.filename):
                continue
            data = old.read(info)
            if info.filename.endswith(".dist-info/WHEEL") and build_tag:
                data = data.rstrip(b"\n") + f"\nBuild: {build_tag}\n".encode()
            new.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{info.filename},sha256={digest},{len(data)}")
        record.append(f"{record_name},,")
        new.writestr(record_name, "\n".join(record) + "\n")
    partial.replace(target)
    return target


# What llama-cpp-python's CMake build reads with CUDA on, LLAVA_BUILD off (the sdist is 76 MB: models, docs, tools,
# every other backend): the kit's fallback when no CUDA wheel could be built on a CPU machine.
SDIST_KEEP = ("CMakeLists.txt", "pyproject.toml", "PKG-INFO", "README.md", "LICENSE.md", "llama_cpp/",
              "vendor/llama.cpp/CMakeLists.txt", "vendor/llama.cpp/LICENSE", "vendor/llama.cpp/cmake/",
              "vendor/llama.cpp/licenses/", "vendor/llama.cpp/include/", "vendor/llama.cpp/src/",
              "vendor/llama.cpp/common/", "vendor/llama.cpp/vendor/", "vendor/llama.cpp/ggml/CMakeLists.txt",
              "vendor/llama.cpp/ggml/cmake/", "vendor/llama.cpp/ggml/include/", "vendor/llama.cpp/ggml/src/ggml-cpu/",
              "vendor/llama.cpp/ggml/src/ggml-cuda/")


def trim_sdist(sdist: Path, target: Path) -> Path:
    """The llama-cpp-python sdist cut to what a CUDA build reads (SDIST_KEEP, and the files of ggml/src itself)."""
    partial = Path(f"{target}.partial")
    with tarfile.open(sdist) as old, tarfile.open(partial, "w:gz") as new:
        for member in old:
            top, _, rel = member.name.partition("/")
            own = rel.startswith("vendor/llama.cpp/ggml/src/") and rel.count("/") == 4
            if member.isfile() and (own or any(rel == k or (k.endswith("/") and rel.startswith(k)) for k in SDIST_KEEP)):
                new.addfile(member, old.extractfile(member))
    partial.replace(target)
    return target


def _patch_hash(repo: Path) -> str | None:
    try:
        return subprocess.run(["bash", str(repo / "scripts/llama_patches.sh"), "hash"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def cached_wheels(cache: Path = WHEEL_CACHE, download: bool = False) -> list[Path]:
    """The pure wheels for Python 3.12 (KIT_WHEELS) from the cache; `download` fetches the missing ones."""
    folder = cache / KIT_WHEEL_DIR
    found = []
    for name, version in KIT_WHEELS.items():
        matches = sorted(folder.glob(f"{name}-{version}-*.whl"))
        if not matches and download:
            folder.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", *PY312,
                            "-d", str(folder), f"{name}=={version}"], check=True)
            matches = sorted(folder.glob(f"{name}-{version}-*.whl"))
        found += matches[:1]
    return found


def cuda_wheel(cache: Path = WHEEL_CACHE) -> Path | None:
    matches = sorted(cache.glob(CUDA_WHEEL_GLOB))
    return matches[-1] if matches else None


def build_kit(out: Path, *, tiny_checkpoint: Path, vision_dirs: dict[str, Path], wheels: list[Path],
              bench_checkpoint: Path | None = None, llama_src: Path | None = None, repo: Path = REPO,
              limit: int = CARRY_LIMIT) -> dict:
    """Write the kit folder; refuses (SystemExit) when it and the repository would pass the carry limit.
    `llama_src`: the trimmed sdist, for a box that must compile llama.cpp itself (no CUDA wheel in `wheels`)."""
    from exaone_edge.benchmarks.synthetic import skeleton
    from exaone_edge.files import atomic_dir

    repo_bytes = travel_bytes(repo) or 0  # before the kit's staging folder appears beside it
    with atomic_dir(Path(out), overwrite=True) as tmp:
        (tmp / "wheels").mkdir()
        for wheel in wheels:
            shutil.copy2(wheel, tmp / "wheels" / wheel.name)
        skeleton(tiny_checkpoint, tmp / "tiny")
        if bench_checkpoint is not None:
            skeleton(bench_checkpoint, tmp / "bench")
        for precision, directory in vision_dirs.items():
            shutil.copytree(directory, tmp / f"vision-{precision}")
        if llama_src is not None:
            shutil.copy2(llama_src, tmp / LLAMA_SRC)
        build_seconds, built_patches = None, None
        for wheel in wheels:
            if wheel.name.startswith("llama_cpp_python"):
                stamp, patches = wheel.parent / "build-seconds", wheel.parent / "patches"
                build_seconds = int(stamp.read_text().strip()) if stamp.is_file() else None
                built_patches = patches.read_text().strip() if patches.is_file() else "none"
        kit_bytes = tree_bytes(tmp)
        summary = {"wheels": {w.name: w.stat().st_size for w in wheels}, "bench": bench_checkpoint is not None,
                   "llama_src": llama_src is not None,
                   "vision": sorted(vision_dirs), "cuda_wheel_build_seconds": build_seconds,
                   # patches/llama.cpp the CUDA wheel was compiled with ("none": before the patch set) and the
                   # repository's now; the check's paths use no patched graph, so a stale wheel still checks CUDA
                   "cuda_wheel_patches": built_patches, "llama_patches": _patch_hash(repo),
                   "kit_bytes": kit_bytes, "repo_bytes": repo_bytes, "limit_bytes": limit}
        if kit_bytes + repo_bytes > limit:
            raise SystemExit(f"gpu_kit: kit {kit_bytes / MIB:.1f} MiB + repository {repo_bytes / MIB:.1f} MiB "
                             f"exceeds the {limit / MIB:.0f} MiB carry limit")
        (tmp / "kit.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    summary["kit_bytes"] = tree_bytes(Path(out))
    return summary


def _fixture_stamp() -> str:
    """What the cached checkpoints were built from: the fixture's source (a preset that gained a tensor, the MTP head,
    must not be served from a cache built before it)."""
    return hashlib.sha256((REPO / "fixtures/tiny_model.py").read_bytes()).hexdigest()[:16]


def _cached(target: Path, stamp: str, build) -> Path:
    """`target`, built by `build(target)` unless a build from the same `stamp` is there (the stamp sits beside it)."""
    mark = target.with_name(target.name + ".stamp")
    if not (target.is_dir() and mark.is_file() and mark.read_text() == stamp):
        build(target)
        mark.write_text(stamp)
    return target


def _checkpoint(path: Path | None, work: Path, preset: str) -> Path:
    """The given checkpoint, or the preset built under `work` once per fixture version (needs transformers with
    EXAONE 4.5)."""
    if path is not None:
        return path
    from exaone_edge.fixtures.tiny_model import build_tiny_model

    return _cached(work / preset, _fixture_stamp(),
                   lambda target: build_tiny_model(target, seed=0, overwrite=True, preset=preset))


def _vision(model: Path, work: Path, precision: str) -> Path:
    from exaone_edge.export.vision import export_vision

    stamp = model.with_name(model.name + ".stamp")  # rebuilt with the checkpoint it exports
    return _cached(work / f"vision-{precision}", stamp.read_text() if stamp.is_file() else str(model),
                   lambda target: export_vision(model, target, precision=precision, overwrite=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="write the kit (here, where transformers and the wheels are)")
    build.add_argument("--out", type=Path, default=KIT_DIR)
    build.add_argument("--work", type=Path, default=Path("/tmp/exaone-edge-gpu-kit"), help="checkpoints built once")
    build.add_argument("--tiny-checkpoint", type=Path)
    build.add_argument("--bench-checkpoint", type=Path)
    build.add_argument("--no-bench", action="store_true", help="leave out the real-width bench skeleton")
    build.add_argument("--download", action="store_true", help="fetch missing pure wheels with pip download")
    trim = sub.add_parser("trim", help="cut the llama-cpp-python sdist to what a CUDA build reads (stdlib only)")
    trim.add_argument("source", type=Path)
    trim.add_argument("target", type=Path)
    slim = sub.add_parser("slim", help="one copy of each library in a llama-cpp-python wheel (stdlib only)")
    slim.add_argument("source", type=Path)
    slim.add_argument("target", type=Path)
    slim.add_argument("--build-tag")
    box = sub.add_parser("install", help="install the kit offline (on the GPU box; stdlib only)")
    box.add_argument("--kit", type=Path, default=KIT_DIR)
    box.add_argument("--site", type=Path, default=Path("/tmp/exaone-edge-site"))
    box.add_argument("--wheel", type=Path, action="append", default=[], help="another wheel (one built on the box)")
    args = parser.parse_args(argv)
    if args.command == "install":
        install(args.kit, args.site, extra=tuple(args.wheel))
        return 0
    if args.command == "trim":
        trim_sdist(args.source, args.target)
        print(f"gpu_kit: {args.target} {args.target.stat().st_size / MIB:.1f} MiB (from {args.source.stat().st_size / MIB:.1f})")
        return 0
    if args.command == "slim":
        slim_wheel(args.source, args.target, args.build_tag)
        print(f"gpu_kit: {args.target} {args.target.stat().st_size / MIB:.1f} MiB (from {args.source.stat().st_size / MIB:.1f})")
        return 0
    tiny = _checkpoint(args.tiny_checkpoint, args.work, "tiny")
    bench = None if args.no_bench else _checkpoint(args.bench_checkpoint, args.work, "bench")
    wheels = cached_wheels(download=args.download)
    wheel, llama_src = cuda_wheel(), None
    if wheel is None:  # the box compiles llama.cpp from the trimmed sdist (minutes of device time)
        print("gpu_kit: no CUDA wheel cached (scripts/gpu_kit_wheel.sh): carrying the trimmed sdist instead", file=sys.stderr)
        if not SDIST.is_file():
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d",
                            str(SDIST.parent), "llama-cpp-python==0.3.36"], check=True)
        llama_src = trim_sdist(SDIST, args.work / LLAMA_SRC)
    vision = {precision: _vision(tiny, args.work, precision) for precision in ("fp32", "int8w")}
    summary = build_kit(args.out, tiny_checkpoint=tiny, vision_dirs=vision, wheels=[*([wheel] if wheel else []), *wheels],
                        bench_checkpoint=bench, llama_src=llama_src)
    print(json.dumps(summary, indent=1))
    print(f"gpu_kit: {args.out} {summary['kit_bytes'] / MIB:.1f} MiB + repository {summary['repo_bytes'] / MIB:.1f} "
          f"MiB (limit {CARRY_LIMIT / MIB:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
