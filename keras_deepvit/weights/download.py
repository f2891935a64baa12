"""Download and cache pretrained checkpoint files.

`fetch(filename, urls, ...)` returns the local path of a checkpoint in the
cache directory, downloading it on first use. A file only ever appears under
its final name after it has been fully downloaded and checked (sha256 when
known, "not an HTML page", an optional `validate` callback): downloads go to a
temporary name in the same directory that nothing trusts, and are moved into
place with `os.replace`. So an interrupted, killed or truncated download never
leaves a file that a later call would reuse.

Environment:

* `KERAS_DEEPVIT_CACHE_DIR` overrides the cache directory (default
  `<keras home>/models/keras_deepvit`, where keras home is `$KERAS_HOME` or
  `~/.keras`, as for `keras.utils.get_file`).
* `KERAS_DEEPVIT_WEIGHTS_MIRROR` is for machines that cannot reach Google
  Drive or Hugging Face. If it names a local directory, `<dir>/<filename>` is
  checked and copied into the cache (a copy, so the cache is the one place
  converted files sit next to, and a read-only or network mirror works) and
  the network is never used. If it is a URL (http, https or file),
  `<base>/<filename>` is downloaded instead of the usual origins.
"""

import contextlib
import hashlib
import logging
import os
import secrets
import shutil
import socket
import time
import urllib.error
import urllib.parse
from http.client import IncompleteRead

logger = logging.getLogger(__name__)

MIRROR_ENV = "KERAS_DEEPVIT_WEIGHTS_MIRROR"
CACHE_ENV = "KERAS_DEEPVIT_CACHE_DIR"

#: Temporary files older than this are left-overs of killed processes: an
#: active download rewrites its file continuously.
STALE_TEMP_SECONDS = 3600

_HTML_STARTS = (b"<!doctype html", b"<html")
_DRIVE_REFUSED = (
    "got an HTML page instead of the file: Google Drive refused the download "
    "(quota or confirmation page), or the server sent an error page"
)


class WeightsDownloadError(OSError):
    """A checkpoint could not be obtained; the message says what to do by hand.

    `failures` lists `(source, reason)` for every URL or mirror file tried.
    """

    def __init__(self, message, *, failures=()):
        super().__init__(message)
        self.failures = list(failures)


class _Rejected(Exception):
    """A downloaded file failed a check; the message is the reason shown."""


def google_drive_url(file_id):
    """Direct-download URL of a public Google Drive file.

    `confirm=t` skips the "can't scan this file for viruses" page that Drive
    shows for large files.

    Args:
        file_id: the id in `https://drive.google.com/file/d/<id>/view`.

    Returns:
        The URL, as a string.

    >>> google_drive_url("1AbC")
    'https://drive.usercontent.google.com/download?id=1AbC&export=download&confirm=t'
    """
    query = urllib.parse.urlencode({"id": file_id, "export": "download", "confirm": "t"})
    return f"https://drive.usercontent.google.com/download?{query}"


def huggingface_url(repo_id, filename, revision="main"):
    """Direct-download URL of a file in a Hugging Face model repository.

    Args:
        repo_id: `"owner/name"`.
        filename: path of the file inside the repository.
        revision: branch, tag or commit hash.

    Returns:
        The URL, as a string.

    >>> huggingface_url("timm/pit_s_224.in1k", "model.safetensors")
    'https://huggingface.co/timm/pit_s_224.in1k/resolve/main/model.safetensors'
    """
    quote = urllib.parse.quote
    return f"https://huggingface.co/{quote(repo_id)}/resolve/{quote(revision, safe='')}/{quote(filename)}"


def cache_dir(cache_dir=None):
    """The directory checkpoints are cached in, created if needed.

    Args:
        cache_dir: explicit directory; else `$KERAS_DEEPVIT_CACHE_DIR`; else
            `<keras home>/models/keras_deepvit`, keras home being `$KERAS_HOME`
            or `~/.keras` (`/tmp/.keras` when the home directory is not
            writable), the rule `keras.utils.get_file` follows.

    Returns:
        The absolute path of the directory.
    """
    return _resolve_cache_dir(cache_dir)


def _resolve_cache_dir(directory):
    directory = directory or os.environ.get(CACHE_ENV)
    if not directory:
        # Read at call time, not from keras' import-time copy, so a changed
        # $KERAS_HOME is honoured and no backend needs importing.
        home = os.environ.get("KERAS_HOME")
        if not home:
            base = os.path.expanduser("~")
            home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
        directory = os.path.join(home, "models", "keras_deepvit")
    directory = os.path.abspath(os.path.expanduser(os.fspath(directory)))
    os.makedirs(directory, exist_ok=True)
    return directory


def _temp_prefix(name):
    return f".{name}.tmp-"


@contextlib.contextmanager
def atomic_output(path):
    """Writes a file so that it appears complete under `path` or not at all.

    Yields a temporary path in the same directory (named
    `.{name}.tmp-{pid}-{random}`, which nothing here trusts). On normal exit
    the temporary file is flushed to disk and `os.replace`d onto `path`; on
    any exception, KeyboardInterrupt included, it is removed. A process killed
    inside the block leaves `path` untouched and only the temporary file.

    Args:
        path: the final file path.

    Yields:
        The temporary path to write to.

    >>> import os, tempfile
    >>> target = os.path.join(tempfile.mkdtemp(), "out.bin")
    >>> with atomic_output(target) as tmp:
    ...     with open(tmp, "wb") as f:
    ...         _ = f.write(b"complete")
    >>> open(target, "rb").read()
    b'complete'
    """
    directory, name = os.path.split(os.path.abspath(os.fspath(path)))
    tmp = os.path.join(directory, f"{_temp_prefix(name)}{os.getpid()}-{secrets.token_hex(4)}")
    try:
        yield tmp
        # Without fsync a crash shortly after the rename can leave an empty
        # file under the final name on some filesystems.
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check(path, sha256, validate):
    """Raises _Rejected with the reason when `path` is not the expected file."""
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        raise _Rejected("empty file")
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").lower().startswith(_HTML_STARTS):
        raise _Rejected(_DRIVE_REFUSED)
    if sha256 is not None:
        actual = _sha256(path)
        if actual != sha256:
            raise _Rejected(f"checksum mismatch: expected sha256 {sha256}, got {actual}")
    if validate is not None:
        try:
            validate(path)
        except ValueError as error:
            raise _Rejected(f"not a valid checkpoint: {error}") from error


def _reason(error):
    """One line saying why a download failed, without urllib internals."""
    chain = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    for kind in (urllib.error.HTTPError, urllib.error.ContentTooShortError, IncompleteRead,
                 urllib.error.URLError):
        found = next((e for e in chain if isinstance(e, kind)), None)
        if found is None:
            continue
        if isinstance(found, urllib.error.HTTPError):
            return f"HTTP {found.code} {found.reason}"
        if isinstance(found, (urllib.error.ContentTooShortError, IncompleteRead)):
            return f"truncated download (the server closed the connection early: {found})"
        reason = found.reason
        if isinstance(reason, ConnectionRefusedError):
            return "connection refused"
        if isinstance(reason, socket.gaierror):
            return f"host not found ({reason})"
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return "timed out"
        return str(reason)
    last = chain[-1]
    if isinstance(last, ConnectionError):
        return f"connection lost ({last})"
    return f"{type(last).__name__}: {last}"


def _download(url, target):
    """Downloads `url` to `target` (a temporary name) with Keras' progress bar."""
    # Imported here: importing keras starts a backend, which the cache and
    # atomic_output helpers do not need.
    from keras.utils import get_file

    directory, name = os.path.split(target)
    # get_file: `fname` is a fresh temporary name, so its "already cached"
    # shortcut (which trusts any existing file when no hash is given) never
    # fires; no `extract`, so nothing is renamed or unpacked; the hash is
    # checked by `_check` so the error can show the actual sha256. It falls
    # back to /tmp/.keras for an unwritable cache_dir, hence the move below.
    got = get_file(fname=name, origin=url, cache_dir=directory, cache_subdir=".")
    got = os.path.abspath(got)
    if got != target:
        shutil.move(got, target)


def _remove_stale_temps(directory, filename):
    prefix = _temp_prefix(filename)
    now = time.time()
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            if entry.name.startswith(prefix):
                with contextlib.suppress(OSError):
                    if now - entry.stat().st_mtime > STALE_TEMP_SECONDS:
                        os.remove(entry.path)


def _manual_steps(filename, url, final, manual_hint, sha256, in_mirror=False):
    lines = [f"Download {filename} by hand from", f"  {url}"] if url else [f"Get {filename} by hand"]
    lines.append("(a browser works for Google Drive links), then either")
    if in_mirror:
        lines.append(f"  - put it at {final} (or unset {MIRROR_ENV} to download it)")
    else:
        lines += [f"  - put it at {final}, or",
                  f"  - put it into a mirror directory DIR and set {MIRROR_ENV}=DIR"]
    if manual_hint:
        lines[-1] += ", or"
        lines.append(f"  - convert it with: {manual_hint}")
    if sha256:
        lines.append(f"Its sha256 must be {sha256}.")
    return "\n".join(lines)


def _from_mirror_dir(mirror, filename, final, sha256, validate, urls, manual_hint):
    source = os.path.join(mirror, filename)
    if not os.path.isfile(source):
        raise WeightsDownloadError(
            f"{MIRROR_ENV}={mirror} is set, but {source} does not exist.\n"
            + _manual_steps(filename, urls[0] if urls else None, source, manual_hint, sha256, True),
            failures=[(source, "missing")],
        )
    logger.info("Copying %s from the mirror directory %s", filename, mirror)
    try:
        with atomic_output(final) as tmp:
            shutil.copyfile(source, tmp)
            _check(tmp, sha256, validate)
    except _Rejected as error:
        raise WeightsDownloadError(
            f"The mirror file {source} is not the expected {filename}: {error}.\n"
            + _manual_steps(filename, urls[0] if urls else None, source, manual_hint, sha256, True),
            failures=[(source, str(error))],
        ) from None
    return final


def fetch(filename, urls, *, sha256=None, cache_dir=None, manual_hint=None, validate=None):
    """Returns the local path of a checkpoint, downloading it if needed.

    A file already in the cache (matching `sha256` when given) is reused
    without any network access; one whose sha256 differs is deleted and
    fetched again. Otherwise the mirror (`$KERAS_DEEPVIT_WEIGHTS_MIRROR`, see
    the module docstring) or else each URL in turn is tried until one gives a
    file that passes every check.

    Args:
        filename: the file's name in the cache (a base name, no directories).
        urls: origin URLs, tried in order (a single string is accepted).
        sha256: expected hex digest, when known.
        cache_dir: cache directory, see `cache_dir()`.
        manual_hint: one-line shell command that converts a hand-downloaded
            file, shown in the error message.
        validate: callable taking the downloaded path and raising ValueError
            when the file is unusable (e.g. not a readable checkpoint).

    Returns:
        The absolute path of the cached file.

    Raises:
        WeightsDownloadError: no source gave a good file; the message lists
            each source with its reason and the steps to get the file by hand.
    """
    if not filename or os.path.basename(filename) != filename or filename in (".", ".."):
        raise ValueError(f"`filename` must be a plain file name, got {filename!r}")
    urls = [urls] if isinstance(urls, str) else list(urls)
    if sha256 is not None:
        sha256 = sha256.strip().lower()
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"`sha256` must be 64 hex digits, got {sha256!r}")
    directory = _resolve_cache_dir(cache_dir)
    final = os.path.join(directory, filename)

    if os.path.isfile(final):
        if sha256 is None or _sha256(final) == sha256:
            return final
        logger.warning("Cached %s does not match its sha256; downloading it again", final)
        os.remove(final)

    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if mirror and "://" not in mirror:
        mirror = os.path.abspath(os.path.expanduser(mirror))
        if not os.path.isdir(mirror):
            raise WeightsDownloadError(
                f"{MIRROR_ENV}={mirror} is neither an existing directory nor a URL "
                "(http://, https://, file://)."
            )
        return _from_mirror_dir(mirror, filename, final, sha256, validate, urls, manual_hint)
    if mirror:
        urls = [f"{mirror.rstrip('/')}/{urllib.parse.quote(filename)}"]
    if not urls:
        raise WeightsDownloadError(f"No download URL is known for {filename}.\n"
                                   + _manual_steps(filename, None, final, manual_hint, sha256))
    if not os.access(directory, os.W_OK):
        raise WeightsDownloadError(
            f"The cache directory {directory} is not writable; set {CACHE_ENV} to a writable one.")

    _remove_stale_temps(directory, filename)
    failures, last_error = [], None
    for url in urls:
        logger.info("Downloading %s from %s", filename, url)
        try:
            with atomic_output(final) as tmp:
                try:
                    _download(url, tmp)
                except Exception as error:  # noqa: BLE001 - get_file wraps every failure in Exception
                    raise _Rejected(_reason(error)) from error
                _check(tmp, sha256, validate)
        except _Rejected as error:
            failures.append((url, str(error)))
            last_error = error.__cause__ or error
            logger.warning("Could not download %s from %s: %s", filename, url, error)
            continue
        return final

    listing = "\n".join(f"  - {url}: {reason}" for url, reason in failures)
    origin = f" ({MIRROR_ENV}={mirror})" if mirror else ""
    raise WeightsDownloadError(
        f"Could not download {filename}{origin}:\n{listing}\n"
        + _manual_steps(filename, urls[0], final, manual_hint, sha256),
        failures=failures,
    ) from last_error
