"""Commands of the report stage.

Two parts: the fleet and vehicle reports (``report ...``), and the insurer audit bundles
with their keys (``keys generate``, ``audit export``, ``audit verify``). Each part lists
its commands in ``COMMANDS`` at its end.
"""

from __future__ import annotations

import dataclasses
from datetime import date
from pathlib import Path

import click

from pipeline._config import Settings
from pipeline._params import ANY_DAY, NON_EMPTY, PAST_DAY, NonEmptyPath

COMMANDS: list[click.Command] = []

# --------------------------------------------------------------------------------------
# Audit bundles and their keys: keys generate, audit export, audit verify
# --------------------------------------------------------------------------------------


@click.group("keys")
def keys_group() -> None:
    """Manage the Ed25519 key pair that signs audit bundles."""


@keys_group.command("generate")
@click.option(
    "--out",
    "out_dir",
    type=NonEmptyPath(path_type=Path),
    default=None,
    help="Folder of signing.key and signing.pub [default: DATA_DIR/state/keys].",
)
@click.option("--force", is_flag=True, help="Replace an existing key pair.")
@click.pass_obj
def keys_generate(settings: Settings, out_dir: Path | None, force: bool) -> None:
    """Create the signing key pair (private key mode 0600, public key beside it).

    Give signing.pub to the insurer; signing.key never leaves the fleet.

    Example: fleetbms keys generate --out data/state/keys
    """
    from reports import generate_signing_keys

    pair = generate_signing_keys(out_dir or settings.state_dir / "keys", force=force)
    click.echo(f"private key: {pair.private_key} (mode 0600, keep it secret)")
    click.echo(f"public key:  {pair.public_key} (give it to verifiers)")
    click.echo(f"fingerprint: {pair.fingerprint}")


@click.group("audit")
def audit_group() -> None:
    """Export and verify signed, pseudonymised insurer audit bundles."""


@audit_group.command("export")
@click.option("--from", "date_from", type=ANY_DAY, required=True, help="First day (UTC).")
@click.option("--to", "date_to", type=ANY_DAY, required=True, help="Last day (UTC), included.")
@click.option(
    "--fleet", type=NON_EMPTY, default=None, help="Only this fleet [default: all fleets]."
)
@click.option(
    "--out",
    type=NonEmptyPath(path_type=Path),
    required=True,
    help="Bundle folder, or a file name ending in .tar for a single tar file.",
)
@click.option(
    "--key",
    "key_file",
    type=NonEmptyPath(path_type=Path),
    default=None,
    help="Ed25519 private key [default: DATA_DIR/state/keys/signing.key].",
)
@click.option(
    "--reveal",
    type=NonEmptyPath(path_type=Path),
    default=None,
    help="Also write the pseudonym->VIN mapping (CSV, 0600) to this file, outside the bundle.",
)
@click.option(
    "--cell-csv/--no-cell-csv",
    default=True,
    show_default=True,
    help="Per-cell tables (cell_day) as CSV too; without, Parquet only (~5x smaller bundle).",
)
@click.pass_obj
def audit_export(
    settings: Settings,
    date_from: date,
    date_to: date,
    fleet: str | None,
    out: Path,
    key_file: Path | None,
    reveal: Path | None,
    cell_csv: bool,
) -> None:
    """Write the period's metrics and verdicts as a signed audit bundle.

    Vehicle ids are replaced by keyed pseudonyms (key: DATA_DIR/state/keys/pseudonym.key,
    created on first use). The same inputs and keys give a byte-identical bundle.

    Example: fleetbms audit export --from 2026-11-01 --to 2026-11-30 --out audit-2026-11
    """
    from reports import export_audit_bundle

    parameters = {
        "analytics": dataclasses.asdict(settings.analytics),
        "anomaly": dataclasses.asdict(settings.anomaly),
        "warranty_policy": settings.reports.warranty_policy,
    }
    result = export_audit_bundle(
        settings.lake_dir,
        settings.state_dir,
        out,
        date_from=date_from,
        date_to=date_to,
        fleet=fleet,
        signing_key=key_file,
        reveal=reveal,
        parameters=parameters,
        workers=settings.reports.workers,
        cell_csv=cell_csv,
    )
    click.echo(
        f"Wrote {result.path}: fleets {', '.join(result.fleets)}, "
        f"{result.date_from}..{result.date_to} ({result.days_with_data} "
        f"day{'' if result.days_with_data == 1 else 's'} with data), "
        f"{len(result.tables)} tables, {result.rows:,} rows, {result.vehicles} vehicles, "
        f"{result.files} files, {result.output_bytes / 1e6:.1f} MB"
    )
    click.echo(f"signed by {result.signer}; manifest sha256 {result.manifest_sha256}")
    click.echo(
        f"erasure log: {result.erasures} entr{'y' if result.erasures == 1 else 'ies'}, "
        f"head {result.erasure_head[:16]}"
    )
    if reveal is not None:
        click.echo(f"pseudonym->VIN mapping: {reveal} (private: do not send it with the bundle)")


@audit_group.command("verify")
@click.argument("bundle", type=NonEmptyPath(path_type=Path))
@click.option(
    "--public-key",
    type=NonEmptyPath(path_type=Path),
    required=True,
    help="The fleet's Ed25519 public key (signing.pub).",
)
@click.option(
    "--earlier",
    type=NonEmptyPath(path_type=Path),
    default=None,
    help="A bundle of the fleet received before: this bundle's erasure log must start "
    "with all of its entries.",
)
@click.pass_context
def audit_verify(ctx: click.Context, bundle: Path, public_key: Path, earlier: Path | None) -> None:
    """Check a bundle offline: every file's hash, the day chain, the erasure log's chain
    and the signature.

    Prints each problem (changed, added or removed file, broken chain, bad signature,
    an erasure log cut back against --earlier) and exits 1 if there is any; prints a
    summary and exits 0 otherwise.

    Example: fleetbms audit verify audit-2026-11 --public-key signing.pub
    """
    from reports import verify_audit_bundle

    result = verify_audit_bundle(bundle, public_key, earlier=earlier)
    for problem in result.problems:
        click.echo(str(problem))
    click.echo(result.summary())
    if not result.ok:
        ctx.exit(1)


COMMANDS += [keys_group, audit_group]


# --------------------------------------------------------------------------------------
# Fleet and vehicle reports: report fleet, report vehicle
# --------------------------------------------------------------------------------------


def _sizes(paths: list[Path]) -> str:
    return "\n".join(f"wrote {p} ({p.stat().st_size / 1e3:.1f} kB)" for p in paths)


@click.group("report")
def report_group() -> None:
    """Fleet and vehicle battery-health reports (PDF, CSV).

    Example: fleetbms report fleet --date 2026-11-24
    """


@report_group.command("fleet")
@click.option("--date", "day", type=PAST_DAY, required=True, help="UTC date of the metrics.")
@click.option("--fleet", type=NON_EMPTY, default=None, help="Fleet id [default: fleet.id].")
@click.option(
    "--format",
    "formats",
    type=NON_EMPTY,
    default=None,
    help="Comma-separated: pdf, csv [default: reports.formats].",
)
@click.option(
    "--flagged",
    is_flag=True,
    help="Also write a vehicle report for every newly flagged vehicle (as the nightly run).",
)
@click.pass_obj
def report_fleet(
    settings: Settings, day: date, fleet: str | None, formats: str | None, flagged: bool
) -> None:
    """Write the fleet report (DATA_DIR/reports/date=D/fleet-<id>.pdf and .csv).

    Example: fleetbms report fleet --date 2026-11-24 --fleet demo --format pdf,csv
    """
    from reports import fleet_report, render_reports

    cfg = settings.reports
    args = (settings.lake_dir, settings.reports_dir, day, fleet or settings.fleet.id)
    if flagged:
        paths = render_reports(
            *args,
            formats=formats or cfg.formats,
            workers=cfg.workers,
            window_days=cfg.vehicle_window_days,
        )
    else:
        paths = fleet_report(*args, formats=formats or cfg.formats)
    click.echo(_sizes(paths))


@report_group.command("vehicle")
@click.argument("vin")
@click.option("--date", "day", type=PAST_DAY, required=True, help="UTC date of the metrics.")
@click.option("--fleet", type=NON_EMPTY, default=None, help="Fleet id [default: the registry's].")
@click.pass_obj
def report_vehicle(settings: Settings, vin: str, day: date, fleet: str | None) -> None:
    """Write one vehicle's report (DATA_DIR/reports/date=D/vehicles/<VIN>.pdf).

    Example: fleetbms report vehicle MAT612345NEX00001 --date 2026-11-24
    """
    from reports import vehicle_report

    path = vehicle_report(
        settings.lake_dir,
        settings.reports_dir,
        vin,
        day,
        fleet=fleet,
        window_days=settings.reports.vehicle_window_days,
    )
    click.echo(_sizes([path]))


COMMANDS += [report_group]
