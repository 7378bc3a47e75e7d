"""What `restream list` and `restream show` print, as text: shared by the Typer commands (``cli``) and the fast
path (``fastpath``), so the two cannot print different things.

No Typer, no Rich, no json unless asked for JSON: both commands must start in well under 80 ms. Each function
returns the output as pieces ``(kind, text)``: ``"echo"`` a line for stdout (the CLI prints it with ``typer.echo``),
``"write"`` text written to stdout as it is (the table), ``"warn"`` a warning line for stderr. Errors are raised
(``RestreamError``) before anything is printed.
"""

from __future__ import annotations

from restream import paths
from restream import profile as prof
from restream.redact import mask_url

Pieces = list[tuple[str, str]]


def load_existing(name: str) -> prof.Profile:
    """Reading commands: the default profile may be empty; any other must exist."""
    return prof.load(prof.validate_profile_name(name), must_exist=name != paths.DEFAULT_PROFILE)


def dest_dict(d: prof.Destination, show_keys: bool) -> dict:
    key = d.stream_key if show_keys else prof.mask_key(d.stream_key)
    out = {"name": d.name, "server_url": d.server_url if show_keys else mask_url(d.server_url), "stream_key": key or None,
           "stream_key_env": d.stream_key_env, "enabled": d.enabled, "platform": d.platform}
    source = d.key_source()
    out["key_source"] = "env" if source.startswith("$") else source
    if show_keys:  # where the key is read from (never what it reads): only with --show-keys
        if d.stream_key_file:
            out["stream_key_file"] = d.stream_key_file
        if d.stream_key_cmd:
            out["stream_key_cmd"] = list(d.stream_key_cmd)
    if d.ca_file:
        out["ca_file"] = d.ca_file
    if d.encoding():
        out["encoding"] = d.encoding()
    if d.backup_url:
        out["backup_url"] = d.backup_url if show_keys else mask_url(d.backup_url)
        out["backup"] = d.backup_mode
    return out


def list_pieces(profile: str, as_json: bool, show_keys: bool) -> Pieces:
    p = load_existing(profile)
    rows = [dest_dict(d, show_keys) for d in p.destinations]
    if as_json:
        import json

        return [("echo", json.dumps({"profile": p.name, "destinations": rows}, ensure_ascii=False, indent=2))]
    if not rows:
        return [("echo", f"profile {p.name!r} has no destinations yet. Add one: restream add youtube --key-stdin")]
    import io

    from restream.tables import table

    columns = [("NAME", "name"), ("ON", "enabled"), ("SERVER URL", "server_url"), ("KEY", "key")]
    if any(d.encoding() for d in p.destinations):
        columns.append(("ENCODING", "encoding"))
    if any(r.get("backup_url") for r in rows):
        columns.append(("BACKUP", "backup"))
    text = io.StringIO()
    table(columns,
          [{**r, "enabled": "yes" if r["enabled"] else "no", "encoding": d.describe_encoding(),
            "key": r["stream_key"] or (f"${r['stream_key_env']}" if r["stream_key_env"] else
                                       r["key_source"] if r["key_source"] in ("file", "command") else "-"),
            "backup": "-" if not r.get("backup_url") else r["backup"]}
           for r, d in zip(rows, p.destinations)],
          title=f"profile {p.name} ({p.path})", out=text)
    pieces: Pieces = [("write", text.getvalue())]
    live = len(p.enabled())
    if live > prof.MAX_LIVE:
        pieces.append(("warn", f"{live} destinations are enabled; at most {prof.MAX_LIVE} can go live at once "
                               "(use --only/--skip)"))
    return pieces


def show_pieces(name: str, profile: str, as_json: bool, show_keys: bool) -> Pieces:
    d = load_existing(profile).get(name)
    row = dest_dict(d, show_keys)
    if as_json:
        import json

        return [("echo", json.dumps(row, ensure_ascii=False, indent=2))]
    from restream import platforms

    preset = platforms.get(d.platform)
    row["key"] = row.pop("stream_key") or ({"file": "(read from its key file when going live)",
                                             "command": "(from its key command, run when going live)"}
                                            .get(row["key_source"], "-"))
    row["enabled"] = "yes" if d.enabled else "no"
    row["platform"] = preset.title if preset else (d.platform or "-")
    row["encoding"] = d.describe_encoding() if d.encoding() else "the broadcast's"
    width = max(map(len, row))
    return [("echo", f"{k:<{width}}  {v if v is not None else '-'}") for k, v in row.items()]
