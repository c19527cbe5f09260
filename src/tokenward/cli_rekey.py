"""`tokenward rekey`: re-encrypt every stored record with the current encryption key.

Why a command: rotating a key means putting the new key first in `[store] encryption_keys`
(or `TOKENWARD_ENCRYPTION_KEY`), keeping the old one after it, re-encrypting, and only then
dropping the old key. Records are rewritten one by one with compare-and-set while everything
keeps running; a refresh that lands meanwhile wins and its record is re-read (see
`EncryptedStore.rekey`). The same run encrypts plaintext records written before encryption was
turned on. Output names records and key ids, never a value.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .cli_base import config_option
from .config import ConfigError, CredentialConfig, load_config
from .stores.base import Store
from .stores.encrypted import EncryptedStore

__all__ = ["rekey"]


@click.command()
@click.option("--dry-run", is_flag=True, help="Count what would be re-encrypted; write nothing.")
@click.option(
    "--delete-unreadable",
    is_flag=True,
    help="Delete records that fail authentication (tampered); they then need a new login. "
    "Records encrypted with a key that is not configured are kept.",
)
@config_option  # the shared --config (cli_base): before or after the command
def rekey(dry_run: bool, delete_unreadable: bool, config_path: Path | None) -> None:
    """Re-encrypt every record of the configured stores with the current (first) key.

    Runs online: refreshes go on meanwhile. Exits 1 when a record could not be decrypted.

    \b
    Example (rotation):
      export TOKENWARD_ENCRYPTION_KEY="$NEW_KEY,$OLD_KEY"
      tokenward rekey --dry-run && tokenward rekey
      export TOKENWARD_ENCRYPTION_KEY="$NEW_KEY"
    """
    config = load_config(config_path)
    try:
        stores: list[Store] = [config.store_for(c) for c in config.credentials.values()]
        if not stores:  # no credential yet: the [store] one (or the default store)
            anonymous = CredentialConfig("", config.path or Path("tokenward.toml"))
            stores = [config.store_for(anonymous)]
        seen: set[int] = set()
        failed = 0
        for store in stores:
            if id(store) in seen:
                continue
            seen.add(id(store))
            if not isinstance(store, EncryptedStore):
                raise ConfigError(
                    f"{config.path}: no encryption keys are configured for store "
                    f"{store.location}. Set [store] encryption_keys (or "
                    "TOKENWARD_ENCRYPTION_KEY) first."
                )
            report = store.rekey(dry_run=dry_run, delete_unreadable=delete_unreadable)
            changed = report.rekeyed + report.encrypted
            verb = "would re-encrypt" if dry_run else "re-encrypted"
            line = (
                f"{store.location}: {verb} {changed} record(s) with key {report.key_id} "
                f"({report.rekeyed} from older keys, {report.encrypted} from plaintext), "
                f"{report.current} already current"
            )
            if report.deleted:
                line += f", {report.deleted} unreadable deleted"
            if report.failed:
                line += f", {len(report.failed)} failed"
            click.echo(line)
            for _key, message in report.failed:
                click.echo(f"error: {message}", err=True)
            failed += len(report.failed)
    finally:
        config.close()
    if failed:
        sys.exit(1)
