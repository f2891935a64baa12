"""Download and cache pretrained checkpoint files.

`fetch(filename, urls, ...)` returns the local path of a checkpoint in the
cache directory, downloading it on first use. A file only ever appears under
its final name after it has been fully downloaded and checked: every byte the
server declared (Content-Length) received, sha256 when known, "not an HTML
page", an optional `validate` callback (`weights="imagenet"` reads the whole
checkpoint and checks its architecture). Downloads go to a temporary name in
the same directory that nothing trusts, and are moved into place with
`os.replace`. So an interrupted, killed, stalled or truncated download never
leaves a file that a later call would reuse, and a cached file that fails the
same checks later is removed (one warning) and fetched again.

Every read from the network has a timeout, so a stalled server is an error
(and the next URL is tried), never a hang.

Temporary files are named `.<file>.tmp-<host>-<pid>-<random>`. One is stale,
and removed by the next `fetch` in that directory, when its process is gone
(same host, pid not running) or, for another host's (a shared cache) or an
unparsable name, when it has not been written to for `STALE_TEMP_SECONDS`
(an active download writes continuously). A live process's file is never
touched.

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
* `KERAS_DEEPVIT_DOWNLOAD_TIMEOUT`: seconds to wait for the connection and
  for each read (default 30); a server silent for longer fails that URL.
* `KERAS_DEEPVIT_SHA256SUMS`: a file of pinned checksums in the format
  `sha256sum` prints (`<hex>  <filename>`), default `<cache dir>/SHA256SUMS`;
  a pin applies to origins whose record has no sha256 (see docs/weights.md).
"""

import contextlib
import hashlib
import logging
import os
import re
import secrets
import shutil
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from http.client import IncompleteRead

logger = logging.getLogger(__name__)

MIRROR_ENV = "KERAS_DEEPVIT_WEIGHTS_MIRROR"
CACHE_ENV = "KERAS_DEEPVIT_CACHE_DIR"
TIMEOUT_ENV = "KERAS_DEEPVIT_DOWNLOAD_TIMEOUT"
SHA256_ENV = "KERAS_DEEPVIT_SHA256SUMS"

#: Seconds to wait for a connection and for each read. Generous for a slow
#: link (a read returns as soon as any bytes arrive), short next to "forever".
DEFAULT_TIMEOUT = 30.0

#: A temporary file not written to for this long, whose owner cannot be
#: asked (another host, an unparsable name), is a killed process's left-over.
STALE_TEMP_SECONDS = 3600

_CHUNK = 1 << 20
_TEMP_OWNER = re.compile(r"\.tmp-(?:(?P<host>[A-Za-z0-9_]+)-)?(?P<pid>\d+)-[0-9a-f]+")

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


def _host():
    # Only [A-Za-z0-9_]: the name stays parsable whatever the host is called.
    return re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname()) or "_"


def _owner_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by another user
    return True


def _is_stale(entry, now):
    owner = _TEMP_OWNER.search(entry.name)
    if owner and owner["host"] == _host():
        return not _owner_alive(int(owner["pid"]))
    return now - entry.stat().st_mtime > STALE_TEMP_SECONDS


def remove_stale_temporaries(directory, filename=None):
    """Removes the temporary files killed processes left in `directory`.

    The rule (see the module docstring): a file named by `atomic_output` on
    this host goes when its pid is not running; any other goes when it has not
    been written to for `STALE_TEMP_SECONDS`. A running process's file stays.

    Args:
        directory: where to look.
        filename: only temporaries of this final name; default every
            `atomic_output` temporary (right for the cache, which is ours).

    Returns:
        The removed paths.

    >>> import tempfile
    >>> remove_stale_temporaries(tempfile.mkdtemp())
    []
    """
    prefix = _temp_prefix(filename) if filename else "."
    now, removed = time.time(), []
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            if not (entry.name.startswith(prefix) and ".tmp-" in entry.name and entry.is_file()):
                continue
            with contextlib.suppress(OSError):  # e.g. its owner finished and moved it meanwhile
                if _is_stale(entry, now):
                    os.remove(entry.path)
                    removed.append(entry.path)
    if removed:
        logger.info("Removed %d temporary file(s) left by killed runs in %s", len(removed), directory)
    return removed


@contextlib.contextmanager
def atomic_output(path):
    """Writes a file so that it appears complete under `path` or not at all.

    Yields a temporary path in the same directory (named
    `.{name}.tmp-{host}-{pid}-{random}`, which nothing here trusts and
    `remove_stale_temporaries` removes once its process is gone). On normal exit
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
    tmp = os.path.join(directory, f"{_temp_prefix(name)}{_host()}-{os.getpid()}-{secrets.token_hex(4)}")
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


def sha256_of(path):
    """The hex sha256 of a file (read in 1 MiB blocks), as `sha256sum` prints it."""
    return _sha256(path)


def _pins_path(directory):
    return os.path.abspath(os.path.expanduser(os.environ.get(SHA256_ENV) or os.path.join(directory, "SHA256SUMS")))


def pinned_sha256(filename, cache_dir=None):
    """The sha256 pinned for `filename` in the checksum file, or None.

    The file (`$KERAS_DEEPVIT_SHA256SUMS`, default `<cache dir>/SHA256SUMS`)
    has `sha256sum`'s format: `<64 hex digits>  <filename>` per line (`*`
    before the name allowed; blank lines and `#` comments skipped), so
    `sha256sum pit_s.official.pth >> SHA256SUMS` pins a file you trust.

    Raises:
        ValueError: a line that is not in that format (the file and line named).
    """
    path = _pins_path(_resolve_cache_dir(cache_dir))
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            match = re.fullmatch(r"([0-9a-fA-F]{64}) [ *](.+)", line)
            if match is None:
                raise ValueError(
                    f"{path}, line {number}: expected '<64 hex digits>  <filename>' (what sha256sum "
                    f"prints), got {line[:80]!r}. Fix or remove the line ({SHA256_ENV} names the file).")
            if os.path.basename(match[2].strip()) == filename:
                return match[1].lower()
    return None


def _check(path, sha256, validate, shown="the download", pinned_in=None):
    """Raises _Rejected with the reason when `path` is not the expected file.

    `shown` replaces the (temporary) path in the validator's message.
    """
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        raise _Rejected("empty file")
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").lower().startswith(_HTML_STARTS):
        raise _Rejected(_DRIVE_REFUSED)
    if sha256 is not None:
        actual = _sha256(path)
        if actual != sha256:
            where = f" (the pin in {pinned_in})" if pinned_in else ""
            raise _Rejected(f"checksum mismatch: expected sha256 {sha256}, got {actual}{where}")
    elif validate is not None:
        # A matching sha256 already proves the file; the structural check is
        # for files nobody could pin yet.
        try:
            validate(path)
        except ValueError as error:
            raise _Rejected(f"not a valid checkpoint: {str(error).replace(path, shown)}") from error


class _Truncated(Exception):
    """The body ended before the declared Content-Length."""


def _reason(error, timeout):
    """One line saying why a download failed, without urllib internals."""
    waited = (f"timed out: no data for {timeout:g} s (set {TIMEOUT_ENV} to a larger number of "
              "seconds on a slow link)")
    chain = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    if any(isinstance(e, _Truncated) for e in chain):
        return str(next(e for e in chain if isinstance(e, _Truncated)))
    if any(isinstance(e, TimeoutError) for e in chain):
        return waited
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


def _download(url, target, timeout):
    """Streams `url` into `target` (a temporary name), with Keras' progress bar.

    `timeout` bounds the connection and every read, so a stalled server raises
    TimeoutError; a body shorter than its Content-Length raises _Truncated
    (http.client returns the short body without complaint).

    Returns:
        The sha256 of the bytes received (to show, so that they can be pinned).
    """
    request = urllib.request.Request(url, headers={"User-Agent": "keras-deepvit"})
    with urllib.request.urlopen(request, timeout=timeout) as response, open(target, "wb") as out:
        declared = response.headers.get("Content-Length")
        declared = int(declared) if declared and declared.strip().isdigit() else None
        # Imported here: importing keras starts a backend, which the cache and
        # atomic_output helpers do not need.
        from keras.utils import Progbar

        progress = Progbar(declared, unit_name="B") if declared else None
        received, digest = 0, hashlib.sha256()
        # read1: whatever has arrived (up to 1 MiB), so the file grows as
        # data comes; read(n) would wait for all n bytes.
        read = getattr(response, "read1", response.read)
        for block in iter(lambda: read(_CHUNK), b""):
            out.write(block)
            digest.update(block)
            received += len(block)
            if progress is not None:
                progress.update(min(received, declared))
    if declared is not None and received < declared:
        raise _Truncated(f"truncated download: got {received:,} of {declared:,} bytes (the server "
                         "closed the connection early)")
    return digest.hexdigest()


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


def _from_mirror_dir(mirror, filename, final, check, urls, manual_hint, sha256, removed):
    source = os.path.join(mirror, filename)
    if not os.path.isfile(source):
        raise WeightsDownloadError(
            f"{MIRROR_ENV}={mirror} is set, but {source} does not exist.\n" + removed
            + _manual_steps(filename, urls[0] if urls else None, source, manual_hint, sha256, True),
            failures=[(source, "missing")],
        )
    logger.info("Copying %s from the mirror directory %s", filename, mirror)
    try:
        with atomic_output(final) as tmp:
            shutil.copyfile(source, tmp)
            check(tmp, source)
    except _Rejected as error:
        raise WeightsDownloadError(
            f"The mirror file {source} is not the expected {filename}: {error}.\n" + removed
            + _manual_steps(filename, urls[0] if urls else None, source, manual_hint, sha256, True),
            failures=[(source, str(error))],
        ) from None
    return final


def download_timeout(timeout=None):
    """Seconds to wait for a connection and each read: `timeout`, else `$KERAS_DEEPVIT_DOWNLOAD_TIMEOUT`, else 30.

    >>> download_timeout(2.5)
    2.5
    """
    if timeout is None:
        text = os.environ.get(TIMEOUT_ENV, "").strip()
        if not text:
            return DEFAULT_TIMEOUT
        try:
            timeout = float(text)
        except ValueError:
            raise ValueError(f"{TIMEOUT_ENV}={text} is not a number of seconds (e.g. 30).") from None
        source = f"{TIMEOUT_ENV}={text}"
    else:
        source = f"timeout={timeout!r}"
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < float("inf"):
        raise ValueError(f"The download timeout must be a positive number of seconds, got {source}.")
    return float(timeout)


def _checked_cache(final, check):
    """`final` when it passes `check`; else removes it and returns why (one warning)."""
    try:
        check(final, final)
    except _Rejected as error:
        os.remove(final)
        logger.warning("Removed the cached %s (%s); fetching it again.", final, error)
        return f"Removed the cached {final}: {error}.\n"
    return None


def fetch(filename, urls, *, sha256=None, cache_dir=None, manual_hint=None, validate=None, timeout=None):
    """Returns the local path of a checkpoint, downloading it if needed.

    A file already in the cache is checked as a download would be (its
    sha256 when known, else `validate`) and reused without network access;
    one that fails is removed (one warning) and fetched again. Otherwise the
    mirror (`$KERAS_DEEPVIT_WEIGHTS_MIRROR`, see the module docstring) or else
    each URL in turn is tried until one gives a file that passes every check.

    Args:
        filename: the file's name in the cache (a base name, no directories).
        urls: origin URLs, tried in order (a single string is accepted).
        sha256: expected hex digest, when known; else the one pinned for
            `filename` in the checksum file (`pinned_sha256`), if any.
        cache_dir: cache directory, see `cache_dir()`.
        manual_hint: one-line shell command that converts a hand-downloaded
            file, shown in the error message.
        validate: callable taking a path and raising ValueError when the file
            is unusable (e.g. a truncated or wrong checkpoint); run on files
            no sha256 vouches for, before they get their final name.
        timeout: seconds to wait for the connection and each read; default
            `$KERAS_DEEPVIT_DOWNLOAD_TIMEOUT` or 30.

    Returns:
        The absolute path of the cached file.

    Raises:
        WeightsDownloadError: no source gave a good file; the message lists
            each source with its reason, any cached file removed, and the
            steps to get the file by hand.
        ValueError: a bad argument, timeout setting or checksum file line.
    """
    if not filename or os.path.basename(filename) != filename or filename in (".", ".."):
        raise ValueError(f"`filename` must be a plain file name, got {filename!r}")
    urls = [urls] if isinstance(urls, str) else list(urls)
    if sha256 is not None:
        sha256 = sha256.strip().lower()
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"`sha256` must be 64 hex digits, got {sha256!r}")
    timeout = download_timeout(timeout)
    directory = _resolve_cache_dir(cache_dir)
    final = os.path.join(directory, filename)
    pinned_in = None
    if sha256 is None:
        sha256 = pinned_sha256(filename, directory)
        pinned_in = _pins_path(directory) if sha256 else None

    def check(path, shown):
        _check(path, sha256, validate, shown=shown, pinned_in=pinned_in)

    remove_stale_temporaries(directory)
    removed = ""
    if os.path.isfile(final):
        removed = _checked_cache(final, check)
        if removed is None:
            return final

    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if mirror and "://" not in mirror:
        mirror = os.path.abspath(os.path.expanduser(mirror))
        if not os.path.isdir(mirror):
            raise WeightsDownloadError(
                f"{MIRROR_ENV}={mirror} is neither an existing directory nor a URL "
                "(http://, https://, file://)."
            )
        return _from_mirror_dir(mirror, filename, final, check, urls, manual_hint, sha256, removed)
    if mirror:
        urls = [f"{mirror.rstrip('/')}/{urllib.parse.quote(filename)}"]
    if not urls:
        raise WeightsDownloadError(f"No download URL is known for {filename}.\n" + removed
                                   + _manual_steps(filename, None, final, manual_hint, sha256))
    if not os.access(directory, os.W_OK):
        raise WeightsDownloadError(
            f"The cache directory {directory} is not writable; set {CACHE_ENV} to a writable one.")

    failures, last_error = [], None
    for url in urls:
        logger.info("Downloading %s from %s", filename, url)
        try:
            with atomic_output(final) as tmp:
                try:
                    digest = _download(url, tmp, timeout)
                except Exception as error:  # noqa: BLE001 - urllib, http.client and socket errors alike
                    raise _Rejected(_reason(error, timeout)) from error
                check(tmp, "the download")
        except _Rejected as error:
            failures.append((url, str(error)))
            last_error = error.__cause__ or error
            logger.warning("Could not download %s from %s: %s", filename, url, error)
            continue
        if sha256 is None:
            logger.info("Verified %s (no sha256 pinned; it is %s: see docs/weights.md to pin it)",
                        final, digest)
        return final

    listing = "\n".join(f"  - {url}: {reason}" for url, reason in failures)
    origin = f" ({MIRROR_ENV}={mirror})" if mirror else ""
    raise WeightsDownloadError(
        f"{removed}Could not download {filename}{origin}:\n{listing}\n"
        + _manual_steps(filename, urls[0], final, manual_hint, sha256),
        failures=failures,
    ) from last_error
