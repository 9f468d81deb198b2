"""The cloud link: an :class:`mqtt_session.Session` (aiomqtt) with the agent's settings; low message rates,
where asyncio ergonomics win over paho's callbacks."""

from __future__ import annotations

import ssl

from mqtt_session import Backoff, Session, Will


def client_tls(ca: str, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    """TLS that verifies the broker against ``ca`` and, with ``cert``/``key``, identifies this client."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


class CloudBroker(Session):
    """The agent's cloud-broker session: MQTT v5, a retained QoS 1 ``will``, reconnecting with a jittered
    exponential backoff capped at ``reconnect_max`` seconds."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        keepalive: int = 30,
        will: tuple[str, bytes] | None = None,
        reconnect_max: float = 30.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(
            host,
            port,
            client_id=client_id,
            username=username,
            password=password,
            tls=tls,
            keepalive=keepalive,
            will=Will(will[0], will[1], qos=1, retain=True) if will is not None else None,
            backoff=Backoff(base=0.5, cap=reconnect_max),
        )
