"""`lokal pull`: a GGUF from the Hugging Face Hub into the models directory (huggingface_hub
downloads it, with its progress bar and resume), checked against the sha256 the Hub publishes,
plus a model YAML beside it so that a server on that directory can serve it; `lokal rm` undoes
both."""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lokal.backends.gguf_meta import GgufError, read_gguf_meta

PREFERRED_QUANTS = ("Q4_K_M", "Q4_K_S", "Q5_K_M", "Q4_0", "Q4_1", "Q5_K_S", "Q6_K", "Q8_0")
"""Without a choice: the first of these the repo has (Q4_K_M, the usual size/quality balance)."""
MAX_CONTEXT = 8192
"""The YAML's context: the model's trained context, but no more than this by default (the KV
cache of a 128k context would take gigabytes per slot); raise it in the YAML."""
FILES_DIR = "files"
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)


class PullError(Exception):
    """What the user reads when a pull cannot go on."""


@dataclass(frozen=True, slots=True)
class HubFile:
    name: str
    size: int | None
    sha256: str | None
    """The LFS object's sha256, which the Hub publishes for large files."""


def parse_ref(ref: str) -> tuple[str, str | None]:
    """`owner/name`, `owner/name:Q4_K_M` or `owner/name:file.gguf` -> (repo, choice)."""
    repo, _, choice = ref.partition(":")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise PullError(f"{ref!r} is not a Hub model: expected OWNER/NAME[:QUANT or :FILE]")
    return repo, choice or None


def _quant_of(name: str) -> str | None:
    stem = _SPLIT.sub("", name.rsplit("/", 1)[-1]).removesuffix(".gguf")
    found = re.findall(r"(?:^|[-_.])((?:I?Q\d+_[A-Z0-9_]+)|(?:I?Q\d+)|F16|BF16|F32)$",
                       stem, re.IGNORECASE)
    return found[-1].upper() if found else None


def choose(files: Sequence[HubFile], choice: str | None) -> tuple[list[HubFile], str]:
    """The file (all parts of a split GGUF) to download, and why it was chosen."""
    ggufs = [f for f in files if f.name.lower().endswith(".gguf")
             and "mmproj" not in f.name.lower()]
    if not ggufs:
        raise PullError("the repo holds no GGUF file")
    firsts = [f for f in ggufs if not _SPLIT.search(f.name)
              or _SPLIT.search(f.name).group(1) == "00001"]  # type: ignore[union-attr]
    picked: HubFile | None = None
    if choice is not None and choice.lower().endswith(".gguf"):
        picked = next((f for f in ggufs if f.name == choice), None)
        why = f"{choice}, as asked"
        if picked is None:
            raise PullError(f"no file {choice!r} in the repo; its GGUFs: "
                            + ", ".join(f.name for f in firsts))
    elif choice is not None:
        matches = [f for f in firsts if _quant_of(f.name) == choice.upper()]
        if not matches:
            have = sorted({q for f in firsts if (q := _quant_of(f.name))})
            raise PullError(f"no {choice} GGUF in the repo; it has: {', '.join(have) or 'none'}")
        picked, why = matches[0], f"quantization {choice.upper()}, as asked"
    else:
        for quant in PREFERRED_QUANTS:
            picked = next((f for f in firsts if _quant_of(f.name) == quant), None)
            if picked is not None:
                why = f"quantization {quant}, the default choice (ask for another with :QUANT)"
                break
        else:
            picked = min(firsts, key=lambda f: f.size or 0)
            why = "the smallest GGUF (none of the usual quantizations is there)"
    split = _SPLIT.search(picked.name)
    if split is None:
        return [picked], why
    prefix = picked.name[:split.start()]
    parts = sorted((f for f in ggufs if f.name.startswith(prefix) and _SPLIT.search(f.name)),
                   key=lambda f: f.name)
    if len(parts) != int(split.group(2)):
        raise PullError(f"{picked.name} is split in {int(split.group(2))} parts but the repo "
                        f"lists {len(parts)}")
    return parts, why


def model_id(repo: str, file: str) -> str:
    """A short id for the pulled model: the repo's name without a -GGUF suffix, then the
    quantization, lower case (`SmolLM2-135M-Instruct-GGUF` in Q4_K_M ->
    `smollm2-135m-instruct-q4_k_m`)."""
    name = re.sub(r"[-_.]?gguf$", "", repo.split("/")[1], flags=re.IGNORECASE)
    quant = _quant_of(file)
    base = name if quant is None or name.upper().endswith(quant) else f"{name}-{quant}"
    return re.sub(r"[^a-z0-9._-]+", "-", base.lower()).strip("-")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _hub_files(repo: str, endpoint: str | None, token: str | None) -> tuple[str, list[HubFile]]:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    try:
        info = HfApi(endpoint=endpoint, token=token).model_info(repo, files_metadata=True)
    except RepositoryNotFoundError:
        raise PullError(f"no model {repo!r} on the Hub (or it is private: set HF_TOKEN)") \
            from None
    except (HfHubHTTPError, OSError) as exc:
        raise PullError(f"could not reach the Hub for {repo!r}: {exc}") from None
    files = [HubFile(s.rfilename, s.size, s.lfs.sha256 if s.lfs is not None else None)
             for s in info.siblings or []]
    return str(info.sha), files


def pull(ref: str, models_dir: Path, *, endpoint: str | None = None, token: str | None = None,
         say: Callable[[str], None] = print) -> Path:
    """Downloads `ref` into `models_dir` and writes its YAML; returns the YAML's path."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    repo, choice = parse_ref(ref)
    revision, files = _hub_files(repo, endpoint, token)
    parts, why = choose(files, choice)
    ident = model_id(repo, parts[0].name)
    say(f"pulling {repo} {parts[0].name} ({why}) as model {ident!r}")
    folder = models_dir / FILES_DIR / repo.replace("/", "--")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for part in parts:
        try:
            path = Path(hf_hub_download(repo, part.name, revision=revision, local_dir=folder,
                                        endpoint=endpoint, token=token))
        except (HfHubHTTPError, OSError) as exc:
            raise PullError(f"download of {part.name} stopped: {exc}; run the same pull again "
                            "to resume") from None
        if part.sha256 is not None:
            got = sha256_of(path)
            if got != part.sha256:
                path.unlink()
                raise PullError(f"{part.name} is corrupt: sha256 {got}, the Hub says "
                                f"{part.sha256}; it was deleted, pull again")
            say(f"{part.name}: sha256 checked")
        else:
            say(f"{part.name}: the Hub publishes no sha256 for it, not checked")
        paths.append(path)
    return write_yaml(models_dir, ident, paths[0], repo, revision, parts[0])


def write_yaml(models_dir: Path, ident: str, gguf: Path, repo: str, revision: str,
               part: HubFile) -> Path:
    try:
        trained = read_gguf_meta(gguf).arch("context_length")
    except (GgufError, OSError) as exc:
        gguf.unlink(missing_ok=True)
        raise PullError(f"{gguf.name} is not a readable GGUF ({exc}); it was deleted") from None
    context = min(int(trained), MAX_CONTEXT) if isinstance(trained, int) else 4096
    data: dict[str, Any] = {
        "id": ident,
        "context_length": context,
        "gguf": {"path": str(gguf.relative_to(models_dir))},
        "pulled": {"repo": repo, "revision": revision, "file": part.name,
                   "sha256": part.sha256},
    }
    path = models_dir / f"{ident}.yaml"
    header = (f"# Pulled by `lokal pull {repo}:{part.name}`. The model was trained for "
              f"{trained} tokens of context; this serves {context} per slot.\n")
    path.write_text(header + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def remove(model: str, models_dir: Path) -> list[Path]:
    """Deletes a pulled model's YAML and its downloaded files; returns what was deleted."""
    for path in sorted(models_dir.glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if model not in (data.get("id"), *data.get("aliases", [])):
            continue
        if "pulled" not in data:
            raise PullError(f"{model!r} ({path}) was not pulled by lokal; delete it yourself")
        removed = [path]
        gguf = models_dir / data["gguf"]["path"]
        folder = gguf.parent
        others = [p for p in models_dir.glob("*.yaml") if p != path
                  and str(folder.relative_to(models_dir)) in p.read_text(encoding="utf-8")]
        path.unlink()
        if others:  # another quantization of the same repo keeps the folder
            for file in folder.glob(f"{_SPLIT.sub('', gguf.name).removesuffix('.gguf')}*"):
                file.unlink()
                removed.append(file)
        elif folder.is_dir():
            shutil.rmtree(folder)
            removed.append(folder)
        return removed
    raise PullError(f"no model {model!r} in {models_dir}")
