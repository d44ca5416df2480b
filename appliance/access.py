"""Who may reach the unit: the firewall and SSH, derived from the installed configuration.

On the image, nftables loads a closed ruleset before the network comes up (only ping and
DHCP). Each time the router (or a hub) starts, ``waystation access`` (waystation-access.service,
as root) writes the ruleset that opens exactly what the configuration needs - the DICOM port,
the hub's port where a hub runs, SSH when ``[appliance] ssh_authorized_keys`` lists a key -
and the SSH keys file; the service then loads the ruleset and starts or stops SSH.

A configuration that is missing or does not load opens nothing: the unit stays closed
rather than guessing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from router.config import load_config
from router.errors import ConfigError
from router.spool.fsio import atomic_write, make_dirs

CONFIG_NAME = "waystation.toml"
SSH_PORT = 22
AUTHORIZED_KEYS = "authorized_keys"


@dataclass(frozen=True)
class AccessPlan:
    """What the unit lets in: TCP ports by purpose, and the SSH keys (none: SSH off)."""

    dicom_ports: tuple[int, ...] = ()
    hub_port: int | None = None
    ssh_keys: tuple[str, ...] = ()
    problems: list[str] = field(default_factory=list)

    @property
    def ssh(self) -> bool:
        """Whether SSH is on (at least one key)."""
        return bool(self.ssh_keys)

    def tcp_ports(self) -> list[tuple[int, str]]:
        """Every open TCP port with what it is for, in a stable order."""
        ports = [(port, "DICOM") for port in self.dicom_ports]
        if self.hub_port is not None:
            ports.append((self.hub_port, "hub"))
        if self.ssh:
            ports.append((SSH_PORT, "SSH"))
        return ports


def plan_access(state: Path, hub_config: Path | None) -> AccessPlan:
    """Read the router's (and a hub's) installed configuration into an :class:`AccessPlan`."""
    dicom: tuple[int, ...] = ()
    keys: tuple[str, ...] = ()
    hub_port: int | None = None
    problems: list[str] = []
    router_config = state / CONFIG_NAME
    if router_config.exists():
        try:
            config = load_config(router_config)
        except ConfigError as exc:
            problems += list(exc.problems)
        else:
            # A receiver bound to loopback needs no opening in the firewall.
            if config.ingest.host not in ("127.0.0.1", "::1", "localhost"):
                dicom = (config.ingest.port,)
            keys = tuple(config.appliance.ssh_authorized_keys)
    if hub_config is not None and hub_config.exists():
        try:
            hub = load_config(hub_config).hub
        except ConfigError as exc:
            problems += list(exc.problems)
        else:
            if hub is not None:
                hub_port = hub.port
    return AccessPlan(dicom, hub_port, keys, problems)


def nft_ruleset(plan: AccessPlan) -> str:
    """The whole nftables ruleset (replaces whatever is loaded, atomically with ``nft -f``)."""
    opened = "".join(
        f'    tcp dport {port} accept comment "{purpose}"\n' for port, purpose in plan.tcp_ports()
    )
    return (
        "# Written by `waystation access` from the installed configuration.\n"
        "flush ruleset\n"
        "table inet waystation {\n"
        "  chain input {\n"
        "    type filter hook input priority filter; policy drop;\n"
        "    ct state established,related accept\n"
        "    ct state invalid drop\n"
        '    iif "lo" accept\n'
        "    meta l4proto { icmp, ipv6-icmp } accept\n"
        "    udp sport 67 udp dport 68 accept\n"
        "    udp sport 547 udp dport 546 accept\n"
        f"{opened}"
        "  }\n"
        "  chain forward {\n"
        "    type filter hook forward priority filter; policy drop;\n"
        "  }\n"
        "}\n"
    )


def apply_access(plan: AccessPlan, ssh_dir: Path, nft_path: Path) -> None:
    """Write the ruleset and the SSH keys file (removed when SSH is off)."""
    atomic_write(nft_path, nft_ruleset(plan).encode(), mode=0o600)
    make_dirs(ssh_dir, mode=0o700)
    keys_file = ssh_dir / AUTHORIZED_KEYS
    if plan.ssh:
        atomic_write(keys_file, "".join(f"{key}\n" for key in plan.ssh_keys).encode(), mode=0o600)
    else:
        keys_file.unlink(missing_ok=True)


def describe(plan: AccessPlan) -> str:
    """One line for the journal and the console."""
    ports = ", ".join(f"{purpose} {port}/tcp" for port, purpose in plan.tcp_ports()) or "nothing"
    return f"waystation-access: firewall open for {ports}; SSH {'on' if plan.ssh else 'off'}"
