"""``python manage.py dcron_sync``: write the admin's dynamic tasks back into Redis."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...sync import reconcile

#: Up to this many items of each kind are listed one per line (all with ``-v 2``).
_LISTED = 20


class Command(BaseCommand):
    help = (
        "Reconcile the Redis registry with the DynamicTask table: write entries that are "
        "missing or differ, in batches; copy run counts back. Incremental by default (the "
        "rows changed since the last reconcile); --full compares every row and removes "
        "admin entries whose row is gone. Run it after bulk_create, QuerySet.update or a "
        "database restore (--full), which send no signal. Beat instances reconcile on "
        "their own on start, after Redis lost its data and every dcron_reconcile_interval."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--namespace",
            action="append",
            dest="namespaces",
            help="Only this registry namespace (repeatable). Default: every namespace in use.",
        )
        parser.add_argument(
            "--full",
            action="store_true",
            help="Compare every row (not only those changed since the last reconcile) and "
            "remove the admin entries whose row is gone.",
        )
        parser.add_argument(
            "--wait",
            type=float,
            default=30.0,
            metavar="SECONDS",
            help="Wait this long for a namespace another process is reconciling (default "
            "30); then give up on it with an error.",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Report what would change; change nothing."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["wait"] < 0:
            raise CommandError(f"--wait: {options['wait']} must be >= 0 seconds")
        report = reconcile(
            options["namespaces"], dry_run=options["dry_run"], full=options["full"],
            wait_s=options["wait"],
        )  # fmt: skip
        prefix = "would be " if options["dry_run"] else ""
        for label, items in (
            ("written", report.written),
            ("removed", report.removed),
            ("rows updated", report.rows_updated),
            ("finished rows deleted", report.rows_deleted),
        ):
            shown = items if options["verbosity"] >= 2 else items[:_LISTED]
            for item in shown:
                self.stdout.write(f"{prefix}{label}: {item}")
            if len(shown) < len(items):
                self.stdout.write(f"{prefix}{label}: ... and {len(items) - len(shown)} more "
                                  "(-v 2 lists them all)")  # fmt: skip
        self.stdout.write(("dry run: " if options["dry_run"] else "") + str(report))
        for namespace, holder in report.skipped.items():
            report.errors.append(
                f"namespace {namespace!r}: not reconciled: another process ({holder}) holds "
                "its reconcile lease; try again, or raise --wait"
            )
        if report.errors:
            for error in report.errors:
                self.stderr.write(f"error: {error}")
            raise CommandError(f"{len(report.errors)} tasks or namespaces could not be reconciled")
