"""``python manage.py dcron_sync``: write the admin's dynamic tasks back into Redis."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...sync import reconcile


class Command(BaseCommand):
    help = (
        "Reconcile the Redis registry with the DynamicTask table: write entries that are "
        "missing or differ, remove admin entries whose row is gone, copy run counts back. "
        "Beat instances do this on their own on start, after Redis lost its data and every "
        "dcron_reconcile_interval; run it by hand after restoring a database, say."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--namespace",
            action="append",
            dest="namespaces",
            help="Only this registry namespace (repeatable). Default: every namespace in use.",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Report what would change; change nothing."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        report = reconcile(options["namespaces"], dry_run=options["dry_run"])
        prefix = "would be " if options["dry_run"] else ""
        for label, items in (
            ("written", report.written),
            ("removed", report.removed),
            ("rows updated", report.rows_updated),
            ("finished rows deleted", report.rows_deleted),
        ):
            for item in items:
                self.stdout.write(f"{prefix}{label}: {item}")
        self.stdout.write(("dry run: " if options["dry_run"] else "") + str(report))
        if report.errors:
            for error in report.errors:
                self.stderr.write(f"error: {error}")
            raise CommandError(f"{len(report.errors)} tasks could not be reconciled")
