"""SDS in the xDS agent, beyond the ADS stream: secrets over a gRPC stream of their own, from
watched files, and the rotation of secrets whose certificates are files.

    sources = SecretSources(agent)
    sources.reconcile()         # after every accepted update: who names which secret, where

Where a secret comes from is its reference's SOURCE (xds/secrets.py):

  grpc:<cluster>  SecretDiscoveryService.StreamSecrets (or DeltaSecrets) to the cluster's
                  first endpoint: a Unix socket for Istio's sds-grpc (`pipe`), else host:port.
                  The same protocol object as ADS (xds/ads.py), holding only Secret interest;
                  a bad secret is a NACK naming its path, and the old one keeps serving.
                  Reconnects with the ADS stream's backoff.
  path:<file>     a file holding a DiscoveryResponse of Secrets (YAML or JSON), read again
                  when it changes (or anything moves into its watched_directory); a file that
                  does not load is logged and the secrets it held keep serving.

A secret whose certificate, key or CA is a file (from any source, ADS included) is read again
when its files change: its TlsCertificate's watched_directory, else the files' directories
(xds/file_watch.py). As everywhere, the new secret is used only if it loads (key matching its
certificate); the master then swaps it into the workers' TLS contexts (worker/listener.py),
so new handshakes use it at once and established connections are left alone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random

from . import protos
from .ads import SECRET, AdsProtocol
from .dynamic import error_detail, now_text
from .file_watch import DirectoryWatcher
from .secrets import secret_class, translate_secret

log = logging.getLogger("baton.xds")

BACKOFF_BASE = 0.5
BACKOFF_MAX = 30.0


def sds_stub_class():
    """SecretDiscoveryService's gRPC stub (imports grpc: the agent only)."""
    with protos._unshadowed():
        from envoy.service.secret.v3 import sds_pb2_grpc
    return sds_pb2_grpc.SecretDiscoveryServiceStub


async def discovery_stream(call, requests, handle, on_connected) -> bool:
    """Send a (re)connected stream's first requests, then hand every response to
    `handle(call, response)` until the server ends the stream. -> whether any came (a
    stream that answered resets the reconnect backoff)."""
    import grpc
    for request in requests:
        await call.write(request)
    got = False
    while True:
        response = await call.read()
        if response is grpc.aio.EOF:
            return got
        if not got:
            got = True
            on_connected()
        await handle(call, response)


def grpc_target(cluster: dict) -> str | None:
    """A static cluster's first endpoint as a grpcio target: unix:PATH for a pipe."""
    pipes = cluster.get("pipe_endpoints") or []
    if pipes:
        return f"unix:{pipes[0]}"
    endpoints = cluster.get("endpoints") or []
    if not endpoints:
        return None
    host, port = endpoints[0]["address"], endpoints[0]["port"]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def grpc_channel(cluster: dict, options=()):
    """A grpc.aio channel to a static cluster's first endpoint: over TLS when the cluster has
    an UpstreamTlsContext (xds/tls_upstream.py; istiod's port 15012 wants mTLS), with its
    client certificate, trusted_ca and sni; else plaintext HTTP/2."""
    import grpc
    options = list(options)
    target = grpc_target(cluster)
    tls = cluster.get("transport_socket")
    if not tls:
        return grpc.aio.insecure_channel(target, options=options)
    certificate = tls["certificates"][0] if tls.get("certificates") else None
    credentials = grpc.ssl_channel_credentials(
        root_certificates=tls["trusted_ca"].encode() if tls.get("trusted_ca") else None,
        private_key=certificate["key"].encode() if certificate else None,
        certificate_chain=certificate["chain"].encode() if certificate else None)
    if tls.get("sni"):
        # The name the server's certificate is checked against, and the SNI sent.
        options.append(("grpc.ssl_target_name_override", tls["sni"]))
    return grpc.aio.secure_channel(target, credentials, options=options)


def load_secret(raw: bytes, name: str, path: str, errors: list) -> dict | None:
    pb = secret_class()()
    try:
        pb.ParseFromString(raw)
    except Exception as exc:  # noqa: BLE001 - DecodeError: reported, never raised
        errors.append(f"{path}: cannot decode the resource: {exc}")
        return None
    if name and pb.name != name:
        errors.append(f"{path}: the resource is named '{pb.name}', not '{name}'")
        return None
    return translate_secret(pb, path, errors)


class SecretSources:
    def __init__(self, agent) -> None:
        self.agent = agent
        self.config = agent.config
        self.loop = agent.loop
        self.streams: dict[str, GrpcSecretStream] = {}
        self.files: dict[str, SecretFile] = {}
        self.watcher = DirectoryWatcher(self.loop, self._files_changed)

    def reconcile(self) -> None:
        wanted: dict[str, tuple[dict, set]] = {}
        for ref in self.config.secret_references():
            source = ref["source"]
            if source["kind"] in ("grpc", "path"):
                wanted.setdefault(source["key"], (source, set()))[1].add(ref["name"])
        for key in [k for k in self.streams if k not in wanted]:
            self.streams.pop(key).stop()
        for key in [k for k in self.files if k not in wanted]:
            del self.files[key]
        for key, (source, names) in wanted.items():
            if source["kind"] == "grpc":
                stream = self.streams.get(key)
                if stream is None:
                    self.streams[key] = GrpcSecretStream(self, source, names)
                else:
                    stream.set_names(names)
            elif key not in self.files:
                self.files[key] = SecretFile(self, source)
                self.files[key].load()
        self._watch()

    def _watch(self) -> None:
        """Every directory to watch: each path source's, and each secret read from files."""
        watches = []
        for key, item in self.files.items():
            if item.directory:
                watches.append((item.directory, None, ("path", key)))
            else:
                watches.append((os.path.dirname(os.path.abspath(item.path)),
                                [os.path.basename(item.path)], ("path", key)))
            for secret in item.secrets.values():
                watches += _secret_watches(secret, ("path", key))
        for name, held in self.config.accepted[SECRET].items():
            watches += _secret_watches(held.value, ("ads", name))
        for key, stream in self.streams.items():
            for name, (secret, _) in stream.held.items():
                watches += _secret_watches(secret, ("grpc", key, name))
        self.watcher.set_watches(watches)

    def _files_changed(self, keys) -> None:
        changed = False
        for key in keys:
            if key[0] == "path" and key[1] in self.files:
                changed |= self.files[key[1]].load()
            elif key[0] == "ads":
                changed |= self._reread_ads(key[1])
            elif key[0] == "grpc" and key[1] in self.streams:
                changed |= self.streams[key[1]].reread(key[2])
        if changed:
            self.agent.dirty.set()
            self._watch()

    def _reread_ads(self, name: str) -> bool:
        held = self.config.accepted[SECRET].get(name)
        if held is None:
            return False
        errors = []
        value = load_secret(held.raw, name, f"Secret[{name}]", errors)
        return self._replace(value, held.value, errors, name,
                             lambda v: self.config.replace_secret(name, v))

    @staticmethod
    def _replace(value, old, errors, name, store) -> bool:
        if errors or value is None:
            log.warning("xds: secret '%s' changed on disk but does not load; the old one "
                        "keeps serving: %s", name, error_detail(errors))
            return False
        if value == old:
            return False
        store(value)
        log.info("xds: secret '%s' read again from its files (rotated)", name)
        return True

    def stop(self) -> None:
        for stream in self.streams.values():
            stream.stop()
        self.watcher.close()

    def dump_entries(self) -> list:
        """(name, version, raw Secret, last_updated) of every secret these sources hold, for
        /config_dump's dynamic_active_secrets (xds/dump.py)."""
        entries = []
        for stream in self.streams.values():
            for name, (_, raw) in stream.held.items():
                entries.append((name, stream.protocol.types[SECRET].version, raw, stream.updated))
        for item in self.files.values():
            for name, raw in item.raw.items():
                entries.append((name, "", raw, item.updated))
        return entries


def _secret_watches(secret: dict | None, key) -> list:
    watch = (secret or {}).get("watch")
    if not watch:
        return []
    return [(directory, watch["names"], key) for directory in watch["dirs"]]


class SecretFile:
    """path_config_source: a DiscoveryResponse of Secrets in a file."""

    def __init__(self, owner: SecretSources, source: dict) -> None:
        self.owner = owner
        self.key = source["key"]
        self.path = source["path"]
        self.directory = source.get("watched_directory")
        self.secrets: dict[str, dict] = {}
        self.raw: dict[str, bytes] = {}             # as read, for /config_dump
        self.updated = ""

    def load(self) -> bool:
        """Read the file again. -> whether the secrets changed."""
        errors = []
        secrets, raw = self._read(errors)
        if errors:
            log.warning("xds: SDS file %s rejected; the secrets it held keep serving: %s",
                        self.path, error_detail(errors))
            self.owner.agent.stats.count([f"sds.{n}" for n in sorted(self.secrets)],
                                         "update_rejected")
            self.owner.agent.dirty.set()
            return False
        if secrets == self.secrets:
            return False
        changed = sorted(n for n in secrets if self.secrets.get(n) != secrets[n])
        if self.secrets:
            log.info("xds: SDS file %s read again; secrets updated (rotated): %s", self.path,
                     ", ".join(changed) or "none (some removed)")
        self.secrets, self.raw, self.updated = secrets, raw, now_text()
        self.owner.agent.stats.count([f"sds.{n}" for n in sorted(secrets)], "update_success")
        self.owner.config.set_source_secrets(self.key, secrets, self.owner.loop.time())
        self.owner.agent.dirty.set()
        return True

    def _read(self, errors) -> dict:
        from google.protobuf import json_format
        from .bootstrap import ConfigError, read_document
        try:
            data = read_document(self.path)
        except ConfigError as exc:
            errors.extend(exc.errors)
            return {}, {}
        protos.import_types_in(data)
        response = protos.DiscoveryResponse()
        try:
            json_format.ParseDict(data, response)
        except (json_format.ParseError, TypeError, ValueError) as exc:
            errors.append(f"{self.path}: not a DiscoveryResponse of Secrets: {exc}")
            return {}, {}
        secrets, raw = {}, {}
        for i, any_pb in enumerate(response.resources):
            path = f"{self.path}: resources[{i}]"
            if protos.type_name(any_pb.type_url) != protos.type_name(SECRET):
                errors.append(f"{path}: a {protos.type_name(any_pb.type_url)}, not a Secret")
                continue
            value = load_secret(any_pb.value, "", path, errors)
            if value is not None:
                if value["name"] in secrets:
                    errors.append(f"{path}.name: '{value['name']}' appears twice")
                secrets[value["name"]] = value
                raw[value["name"]] = any_pb.value
        return secrets, raw


class GrpcSecretStream:
    """One SDS stream of its own (api_config_source): Istio's sds-grpc."""

    def __init__(self, owner: SecretSources, source: dict, names) -> None:
        self.owner = owner
        self.agent = owner.agent
        self.key = source["key"]
        self.cluster = source["cluster"]
        self.delta = source.get("api_type") == "DELTA_GRPC"
        self.protocol = AdsProtocol(self.agent.node, delta=self.delta)
        self.protocol.set_interest(SECRET, frozenset(names))
        self.held: dict[str, tuple[dict, bytes]] = {}       # name -> (SECRET, raw)
        self.updated = ""
        self.call = None
        self.task = self.agent.loop.create_task(self._run())

    def set_names(self, names) -> None:
        names = frozenset(names)
        for request in self.protocol.set_interest(SECRET, names):
            if self.call is not None:
                self.agent.loop.create_task(self._write(request))
        dropped = [n for n in self.held if n not in names]
        for name in dropped:
            del self.held[name]
        if dropped:
            self._publish()

    async def _write(self, request) -> None:
        try:
            await self.call.write(request)
        except Exception as exc:  # noqa: BLE001 - the stream broke: _run reconnects
            log.debug("xds: sds %s: write failed: %s", self.key, exc)

    def stop(self) -> None:
        self.task.cancel()

    def _publish(self) -> None:
        self.agent.config.set_source_secrets(
            self.key, {n: v for n, (v, _) in self.held.items()}, self.agent.loop.time())
        self.agent.dirty.set()

    def reread(self, name: str) -> bool:
        item = self.held.get(name)
        if item is None:
            return False
        errors = []
        value = load_secret(item[1], name, f"Secret[{name}]", errors)

        def store(v):
            self.held[name] = (v, item[1])
            self._publish()
        return SecretSources._replace(value, item[0], errors, name, store)

    async def _run(self) -> None:
        import grpc
        attempt = 0
        while True:
            cluster = (self.agent.bootstrap.get("clusters") or {}).get(self.cluster) or {}
            target = grpc_target(cluster)
            got = False
            if target is None:
                reason = f"cluster '{self.cluster}' has no endpoint"
            else:
                channel = grpc_channel(cluster)
                try:
                    got = await self._stream(channel)
                    reason = "the SDS server closed the stream"
                except grpc.aio.AioRpcError as exc:
                    reason = f"{exc.code().name}: {exc.details()}"
                except asyncio.CancelledError:
                    await channel.close()
                    raise
                except Exception as exc:  # noqa: BLE001 - any failure is a lost stream, retried
                    log.exception("xds: sds stream %s failed", self.key)
                    reason = repr(exc)
                finally:
                    self.call = None
                    self.protocol.stream_ended()
                await channel.close()
            attempt = 1 if got else attempt + 1
            delay = random.uniform(0, min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (attempt - 1)))
            log.warning("xds: SDS stream %s (%s) lost (%s); retrying in %.2fs", self.key,
                        target, reason, delay)
            await asyncio.sleep(delay)

    async def _stream(self, channel) -> bool:
        stub = sds_stub_class()(channel)
        self.call = stub.DeltaSecrets() if self.delta else stub.StreamSecrets()
        return await discovery_stream(
            self.call, self.protocol.stream_started(), self._handle,
            lambda: log.info("xds: SDS stream %s connected", self.key))

    async def _handle(self, call, response) -> None:
        stats = self.agent.stats
        try:
            update = self.protocol.on_response(response)
        except ValueError as exc:
            log.warning("xds: sds %s: %s", self.key, exc)
            return
        errors, translated = [], {}
        for name in sorted(set(update.duplicates)):
            errors.append(f"Secret[{name}]: the name appears more than once in the response")
        for name, (_, any_pb) in update.resources.items():
            path = f"Secret[{name}]" if name else "Secret"
            if any_pb.type_url and any_pb.type_url != SECRET:
                errors.append(f"{path}: a {protos.type_name(any_pb.type_url)} in a Secret response")
                continue
            value = load_secret(any_pb.value, name, path, errors)
            if value is not None:
                translated[value["name"]] = (value, any_pb.value)
        scopes = [f"sds.{n}" for n in sorted(set(update.resources) | set(update.removed))]
        stats.count(scopes, "update_attempt")
        if errors:
            message = error_detail(errors)
            log.warning("xds: SDS %s rejected version %r: %s", self.key, update.version, message)
            stats.count(scopes, "update_rejected")
            await call.write(self.protocol.nack(update, message))
            self.agent.dirty.set()                  # the counters travel with the config
            return
        wanted = self.protocol.types[SECRET].interest
        for name, item in translated.items():
            if wanted == "*" or name in wanted:
                self.held[name] = item
        for name in update.removed:
            self.held.pop(name, None)
        stats.count(scopes, "update_success")
        self.updated = now_text()
        await call.write(self.protocol.ack(update))
        self._publish()
        self.owner._watch()
