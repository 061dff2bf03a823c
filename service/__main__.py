"""Command line: serve, analyze, report, make-test-model, check-rules, download-model."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from service.errors import CallPulseError


def _serve(args: argparse.Namespace) -> int:
    from service.app import App
    from service.config import load_config

    cli = {k: getattr(args, k) for k in (
        "host", "grpc_port", "ws_port", "metrics_port", "max_calls", "redis_url", "redis_prefix",
        "model", "hub", "device", "precision", "threads", "rules", "log_level",
    )}
    config = load_config(cli)
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    app = App(config)

    def announce(ready: App) -> None:
        # One JSON line on stdout so that scripts using port 0 learn the ports.
        print(json.dumps({"event": "ready", "grpc_port": ready.grpc_port, "ws_port": ready.ws_port, "metrics_port": ready.metrics_port,
                          "model": ready.model.name if ready.model else None}), flush=True)

    import uvloop

    # The server's loop runs on uvloop (libuv): its callbacks, futures and socket handling cost less CPU per
    # message than asyncio's own loop; tests keep the default loop.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(app.run_until_signalled(on_ready=announce))
    return 0


def _make_test_model(args: argparse.Namespace) -> int:
    from service.inference.testmodel import make_test_model

    info = make_test_model(args.out_dir, size=args.size, favor=args.favor, seed=args.seed)
    print(json.dumps({"out_dir": args.out_dir, **info}))
    return 0


def _check_rules(args: argparse.Namespace) -> int:
    from service.rules import rule_errors

    try:
        with open(args.file, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        print(f"{args.file}: cannot read: {exc}", file=sys.stderr)
        return 2
    rules, errors = rule_errors(text, args.file)
    if not errors and args.labels and rules is not None:
        try:
            rules.check_labels([x.strip() for x in args.labels.split(",")])
        except CallPulseError as exc:
            errors = [str(exc)]
    if errors:
        for line in errors:
            print(line, file=sys.stderr)
        print(f"{args.file}: {len(errors)} error(s)", file=sys.stderr)
        return 2
    assert rules is not None
    print(f"{args.file}: {len(rules.rules)} rule(s) OK: {', '.join(r.id for r in rules.rules)}")
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from service.batch import AnalyzeOptions, analyze
    from service.config import load_config
    from service.domain import Role

    config = load_config({"model": args.model, "hub": args.hub, "device": args.device, "rules": args.rules, "threads": args.threads})
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)

    def roles(text: str | None, option: str) -> tuple[Role, ...] | None:
        if text is None:
            return None
        try:
            return tuple(Role(x.strip()) for x in text.split(",") if x.strip())
        except ValueError:
            raise ValueError(f"{option}: expected customer and/or agent separated by a comma, got {text!r}") from None

    options = AnalyzeOptions(
        out_dir=args.out,
        roles=roles(args.roles, "--roles") or (Role.CUSTOMER, Role.AGENT),
        score_roles=roles(args.score, "--score"),
        embeddings=args.embeddings,
        jobs=args.jobs,
        progress=args.progress,
    )
    results = analyze(args.files, options, config)
    failed = [r for r in results if r.status != "ok"]
    for r in failed:
        print(f"skipped {r.file}: {r.error}", file=sys.stderr)
    print(json.dumps({"analysed": len(results) - len(failed), "skipped": len(failed), "out": args.out}))
    return 1 if failed else 0


def _report(args: argparse.Namespace) -> int:
    from service.report import render_call_report

    with open(args.summary, encoding="utf-8") as fh:
        document = json.load(fh)
    if isinstance(document, dict) and "summary" in document and document.get("type") != "call_summary":
        document = document["summary"]  # a batch result.json
    if not isinstance(document, dict) or document.get("type") != "call_summary":
        raise ValueError(f"{args.summary}: not a call summary document (type call_summary) or a batch result.json")
    html = render_call_report(document)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(html)
    else:
        sys.stdout.write(html)
    return 0


def _download_model(args: argparse.Namespace) -> int:
    from service.inference.download import download_model

    print(download_model(args.model_id, args.out, hub=args.hub))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description="CallPulse real-time emotion alert service")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gRPC service (options override CALLPULSE_* variables)")
    serve.add_argument("--host")
    serve.add_argument("--grpc-port", type=int)
    serve.add_argument("--ws-port", type=int, help="WebSocket port (native, /twilio, /audiohook); -1 disables it")
    serve.add_argument("--metrics-port", type=int, help="-1 disables /metrics")
    serve.add_argument("--max-calls", type=int)
    serve.add_argument("--redis-url")
    serve.add_argument("--redis-prefix")
    serve.add_argument("--model", help="hub id or local funasr model directory")
    serve.add_argument("--hub", choices=["ms", "hf"])
    serve.add_argument("--device", help="cpu, cuda or cuda:N")
    serve.add_argument("--precision", choices=["fp32", "fp16", "bf16"], help="fp16/bf16 autocast on CUDA")
    serve.add_argument("--threads", type=int, help="torch CPU threads (0 = torch default)")
    serve.add_argument("--rules", help="rules YAML file")
    serve.add_argument("--log-level")
    serve.set_defaults(func=_serve)

    mk = sub.add_parser("make-test-model", help="write an UNTRAINED emotion2vec test checkpoint (funasr layout)")
    mk.add_argument("out_dir")
    mk.add_argument("--size", choices=["tiny", "base", "large"], default="tiny")
    mk.add_argument("--favor", help="label that wins on any input, e.g. angry or neutral")
    mk.add_argument("--seed", type=int, default=0)
    mk.set_defaults(func=_make_test_model)

    an = sub.add_parser("analyze", help="analyse recorded calls (WAV, FLAC, OGG, MP3) with the live pipeline, no Redis")
    an.add_argument("files", nargs="+", help="recordings; stereo files carry one speaker per channel")
    an.add_argument("--out", required=True, help="output directory")
    an.add_argument("--model", help="hub id or local funasr model directory (default: CALLPULSE_MODEL)")
    an.add_argument("--hub", choices=["ms", "hf"])
    an.add_argument("--device", help="cpu, cuda or cuda:N")
    an.add_argument("--threads", type=int, help="torch CPU threads (0 = torch default)")
    an.add_argument("--rules", help="rules YAML file (default: the shipped rules)")
    an.add_argument("--roles", help="role of each channel in order (default customer,agent; a mono file takes the first)")
    an.add_argument("--score", help="speakers whose emotion is scored (default: every channel)")
    an.add_argument("--embeddings", action="store_true", help="also write embeddings.npy (one row per scored window)")
    an.add_argument("--jobs", type=int, default=2, help="recordings analysed at once (default 2)")
    an.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="progress bar (default: when stderr is a terminal)")
    an.set_defaults(func=_analyze)

    rep = sub.add_parser("report", help="render the HTML QA report of a call summary (from Redis or a batch result.json)")
    rep.add_argument("summary", help="JSON file: a call_summary document or a result.json")
    rep.add_argument("--out", help="HTML file to write (default: stdout)")
    rep.set_defaults(func=_report)

    check = sub.add_parser("check-rules", help="validate a rules file (every error with its line and column)")
    check.add_argument("file")
    check.add_argument("--labels", help="comma-separated labels the model produces (checks rule labels)")
    check.set_defaults(func=_check_rules)

    dl = sub.add_parser("download-model", help="download a published model (needs a reachable model hub)")
    dl.add_argument("model_id", nargs="?", default="iic/emotion2vec_plus_large")
    dl.add_argument("--out", default="models/emotion2vec_plus_large")
    dl.add_argument("--hub", choices=["ms", "hf"], default="ms")
    dl.set_defaults(func=_download_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CallPulseError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
