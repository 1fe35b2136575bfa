"""``./editlab``: run workflows over ComfyUI's HTTP API, serve the pack headlessly, list its nodes, check the set-up."""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import time
from pathlib import Path

from . import ClientError
from .api import ComfyClient, output_files, text_outputs
from .tiny import missing_model_files, substitute_tiny
from .workflow import apply_overrides, load_workflow, to_api, validate

log = logging.getLogger("editlab")

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


class Stopped(KeyboardInterrupt):
    """A stop signal (SIGINT, SIGTERM or SIGHUP) arrived: unwinds like Ctrl-C, so every server started is stopped."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum, frame):
    raise Stopped(signum)


def install_stop_handlers() -> None:
    """Ctrl-C, a service manager's SIGTERM and a closed terminal's SIGHUP all stop the client and its server: the
    handlers are installed even where SIGINT was ignored at start (a shell's background job)."""
    for name in STOP_SIGNALS:
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _raise_stopped)


class Progress:
    """Progress from /ws: a redrawn bar on a terminal, one line per node otherwise."""

    def __init__(self, prompt: dict, stream=sys.stderr):
        self.prompt = prompt
        self.stream = stream
        self.tty = stream.isatty()
        self.done_nodes = 0
        self.node = None

    def __call__(self, msg: dict) -> None:
        kind, data = msg.get("type"), msg.get("data", {})
        if kind == "executing" and data.get("node") is not None:
            self.node = data["node"]
            self.done_nodes += 1
            self._line(f"[{self.done_nodes}/{len(self.prompt)}] {self._name(self.node)}")
        elif kind == "progress":
            value, total = data.get("value", 0), max(data.get("max", 1), 1)
            width = 24
            bar = "#" * int(width * value / total) + "." * (width - int(width * value / total))
            self._line(f"[{self.done_nodes}/{len(self.prompt)}] {self._name(data.get('node'))} [{bar}] {value}/{total}",
                       redraw=True)
        elif kind == "execution_cached" and data.get("nodes"):
            self.done_nodes += len(data["nodes"])

    def _name(self, node_id):
        node = self.prompt.get(str(node_id), {})
        return f"{node_id} {node.get('_meta', {}).get('title') or node.get('class_type', '')}"

    def _line(self, text, redraw=False):
        if self.tty:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()
        elif not redraw:
            self.stream.write(text + "\n")

    def close(self):
        if self.tty:
            self.stream.write("\n")


@contextlib.contextmanager
def _server(args):
    if args.server:
        client = ComfyClient(args.server)
        if not client.ping(timeout=5):
            raise ClientError(f"cannot reach the ComfyUI server at {args.server}")
        yield client
        return
    from .server import HeadlessServer

    log.info("starting a headless ComfyUI with the pack (first answer takes ~40 s on a CPU)")
    with HeadlessServer(cpu=True if args.cpu else None) as srv:
        yield srv.client


def prepare_prompt(prompt: dict, info: dict, tiny: str = "never") -> dict:
    """The prompt as it will be queued: with ``tiny`` "always" (or "if-missing" and a model file is missing) the
    stock loaders are swapped for EditLabTinyModels and each swap is said; otherwise missing model files are named
    and nothing is queued."""
    missing = missing_model_files(prompt, info)
    if tiny == "always" or (tiny == "if-missing" and missing):
        prompt, swaps = substitute_tiny(prompt)
        if swaps:
            log.info("--tiny: dry run on tiny random-weight models (images are noise):\n  %s", "\n  ".join(swaps))
        return prompt
    if missing:
        raise ClientError("model files the workflow needs are not on this server:\n  " + "\n  ".join(missing) +
                          "\n(add them, or dry-run on tiny random-weight models with --tiny)")
    return prompt


def run_workflow(client: ComfyClient, workflow: dict, assignments: list[str], out_dir: Path,
                 timeout: float = 3600.0, show_progress: bool = True, uploads=(), tiny: str = "never") -> list[Path]:
    """Upload inputs, convert, override, check, queue, follow and download one workflow; return the files written.

    tiny: "never", "always" (--tiny) or "if-missing" (--tiny-if-missing): see :func:`prepare_prompt`."""
    for path in uploads:
        log.info("uploaded %s", client.upload(Path(path)))
    info = client.object_info(refresh=bool(uploads))  # LoadImage's choices now include the uploads
    prompt = prepare_prompt(apply_overrides(to_api(workflow, info), assignments, info), info, tiny)
    problems = validate(prompt, info)
    if problems:
        raise ClientError("the workflow does not fit this server's nodes:\n  " + "\n  ".join(problems))
    started = time.monotonic()
    prompt_id = client.queue(prompt)
    progress = Progress(prompt) if show_progress else None
    try:
        entry = client.wait(prompt_id, timeout=timeout, on_progress=progress)
    finally:
        if progress:
            progress.close()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [client.download(ref, out_dir) for _, ref in output_files(entry)]
    for node_id, index, text in text_outputs(entry):
        path = out_dir / f"node{node_id}_text{index}.txt"
        path.write_text(text, encoding="utf-8")
        written.append(path)
    log.info("prompt %s finished in %.1f s", prompt_id, time.monotonic() - started)
    return written


def cmd_run(args) -> int:
    workflow = load_workflow(args.workflow)  # a malformed file fails before any server starts
    with _server(args) as client:
        tiny = "always" if args.tiny else "if-missing" if args.tiny_if_missing else "never"
        files = run_workflow(client, workflow, args.set or [], Path(args.out), args.timeout,
                             show_progress=not args.quiet, uploads=args.upload or [], tiny=tiny)
    if not files:
        log.warning("the workflow ran but reported no outputs (no Save/Preview node?)")
    for path in files:
        print(path)
    return EXIT_OK


def cmd_serve(args) -> int:
    from .hostenv import REPO
    from .server import HeadlessServer

    workdir = Path(args.workdir) if args.workdir else REPO / "out" / "serve"
    srv = HeadlessServer(port=args.port, cpu=True if args.cpu else None, workdir=workdir)
    srv.start()  # stops its child itself when interrupted while starting
    print(f"ComfyUI with EditLab at {srv.url} (pid {srv.proc.pid}; Ctrl-C stops it)\n"
          f"  its folders (kept after it stops): {srv.workdir}/{{input,output,user}}; log: {srv.log_path}",
          flush=True)
    try:
        while srv.proc.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        srv.stop()
        print(f"stopped; outputs are in {srv.workdir / 'output'}", flush=True)
        return EXIT_OK
    code = srv.proc.returncode
    srv.stop()
    print(f"editlab: error: ComfyUI exited with code {code}; its log is kept at {srv.log_path}\n{srv.log_tail(20)}",
          file=sys.stderr, flush=True)
    return EXIT_FAILED


def cmd_install_inputs(args) -> int:
    from .server import EXAMPLE_INPUTS, copy_example_inputs

    comfy = Path(args.comfyui).expanduser().resolve()
    if not (comfy / "main.py").is_file():
        raise ClientError(f"{comfy} is not a ComfyUI folder (no main.py)")
    target = Path(args.input_dir).expanduser().resolve() if args.input_dir else comfy / "input"
    copied = copy_example_inputs(target)
    kept = sorted({p.name for p in EXAMPLE_INPUTS.glob("*")} - {p.name for p in copied})
    for path in copied:
        print(path)
    if kept:
        log.info("already there, left as they are: %s", ", ".join(kept))
    log.info("the shipped workflows' example images are in %s", target)
    return EXIT_OK


def pack_nodes(object_info: dict) -> list[dict]:
    return [info for name, info in sorted(object_info.items())
            if name.startswith("EditLab") or "editlab" in str(info.get("python_module", "")).lower()]


def cmd_nodes(args) -> int:
    with _server(args) as client:
        nodes = pack_nodes(client.object_info())
    if args.json:
        print(json.dumps({n["name"]: n for n in nodes}, indent=1))
    else:
        for n in nodes:
            print(f"{n['name']:<36} {n.get('category', ''):<24} {n.get('display_name', '')}")
    return EXIT_OK


def cmd_doctor(args) -> int:
    from .doctor import report

    text, ok = report()
    print(text)
    return EXIT_OK if ok else EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="editlab", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)

    def server_opts(p):
        p.add_argument("--server", metavar="URL", help="use a running ComfyUI (e.g. http://127.0.0.1:8188) "
                                                       "instead of starting a headless one")
        p.add_argument("--cpu", action="store_true", help="start the headless server on the CPU")

    run = sub.add_parser("run", help="run a workflow (UI or API format) and download its outputs")
    run.add_argument("workflow", help="workflow .json, as saved by ComfyUI (UI format) or exported as API")
    run.add_argument("--set", action="append", metavar="NODE.INPUT=VALUE",
                     help="change an input before queueing, e.g. --set 12.strength=0.8 (repeatable)")
    run.add_argument("--upload", action="append", metavar="IMAGE",
                     help="copy a local image into the server's input folder first, for LoadImage (repeatable)")
    run.add_argument("--out", default="out", help="folder for the downloaded outputs (default: out/)")
    run.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the prompt")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    run.add_argument("--tiny", action="store_true",
                     help="dry run: swap the stock model loaders for EditLabTinyModels (tiny real architectures, "
                          "random weights: the images are noise) when queueing, and scale the workflow's sizes "
                          "and step counts down for them (each change is printed)")
    run.add_argument("--tiny-if-missing", action="store_true",
                     help="as --tiny, but only when a model file the workflow names is missing (used by make demo)")
    server_opts(run)
    run.set_defaults(func=cmd_run)

    serve = sub.add_parser("serve", help="run a headless ComfyUI with the pack in the foreground")
    serve.add_argument("--port", type=int, default=8188)
    serve.add_argument("--cpu", action="store_true")
    serve.add_argument("--workdir", metavar="DIR",
                       help="where its input/, output/, user/ folders and log live, kept between runs (default: "
                            "out/serve in the repo); the shipped workflows' example images are copied into input/")
    serve.set_defaults(func=cmd_serve)

    inputs = sub.add_parser("install-inputs", help="copy the shipped workflows' example images into your ComfyUI's "
                                                   "input folder (files already there are kept)")
    inputs.add_argument("--comfyui", required=True, metavar="PATH", help="your ComfyUI folder")
    inputs.add_argument("--input-dir", metavar="DIR", help="its input folder, if not PATH/input (--input-directory)")
    inputs.set_defaults(func=cmd_install_inputs)

    nodes = sub.add_parser("nodes", help="list the pack's nodes")
    nodes.add_argument("--json", action="store_true")
    server_opts(nodes)
    nodes.set_defaults(func=cmd_nodes)

    doctor = sub.add_parser("doctor", help="report host, torch, optional dependencies and real model files")
    doctor.set_defaults(func=cmd_doctor)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="editlab: %(message)s")
    install_stop_handlers()
    try:
        return args.func(args)
    except ClientError as exc:
        from .api import PromptFailed

        print(f"editlab: error: {exc}", file=sys.stderr)
        return EXIT_FAILED if isinstance(exc, PromptFailed) else EXIT_BAD_INPUT
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Stopped) else signal.SIGINT
        print(f"editlab: stopped by {signal.Signals(signum).name}", file=sys.stderr)
        return 128 + int(signum)
