"""HTTP client of the hub API (httpx), used by the CLI; turns HTTP failures into messages for humans."""

from __future__ import annotations

from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import TypeAdapter, ValidationError

from hub.api.schemas.catalog import ChangeOut, DesiredOut, HandlerOut, SubscriptionOut
from hub.api.schemas.fleet import AggregateOut, DeviceDetailOut, DeviceOut
from hub.api.schemas.rollouts import ReleaseOut, RolloutOut
from hub.errors import ClientError

DEFAULT_URL = "http://127.0.0.1:8780"
URL_ENV = "EDGEFLEET_HUB_URL"
TOKEN_ENV = "EDGEFLEET_HUB_TOKEN"  # noqa: S105 - the name of a variable, not a secret

T = TypeVar("T")

_AGGREGATES = TypeAdapter(list[AggregateOut])
_DEVICES = TypeAdapter(list[DeviceOut])
_LABELS = TypeAdapter(dict[str, str])
_DEVICE = TypeAdapter(DeviceDetailOut)
_DESIRED = TypeAdapter(DesiredOut)
_HANDLERS = TypeAdapter(list[HandlerOut])
_HANDLER = TypeAdapter(HandlerOut)
_SUBSCRIPTIONS = TypeAdapter(list[SubscriptionOut])
_SUBSCRIPTION = TypeAdapter(SubscriptionOut)
_CHANGE = TypeAdapter(ChangeOut)
_RELEASES = TypeAdapter(list[ReleaseOut])
_RELEASE = TypeAdapter(ReleaseOut)
_ROLLOUTS = TypeAdapter(list[RolloutOut])
_ROLLOUT = TypeAdapter(RolloutOut)


class HubClient:
    """Blocking client of one hub: ``with HubClient(url, token) as hub: hub.aggregates(since="10m")``."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._has_token = bool(token)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)

    def __enter__(self) -> HubClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def aggregates(
        self,
        *,
        device: str | None = None,
        subscription: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int = 100,
        labels: list[str] | None = None,
        group: str | None = None,
        rollup: str | None = None,
        every: str | None = None,
        stats: str | None = None,
    ) -> list[AggregateOut]:
        """Stored window results, newest first; ``since``/``until`` as the API takes them (``10m``, epoch);
        ``labels`` (``k=v`` terms), ``group``, ``rollup="devices"``, ``every="1m"`` and ``stats="count,p99"``."""
        params = {
            "device": device,
            "subscription": subscription,
            "since": since,
            "until": until,
            "limit": limit,
            "label": labels or None,
            "group": group,
            "rollup": rollup,
            "every": every,
            "stats": stats,
        }
        return self._parse(_AGGREGATES, self._request("GET", "/v1/aggregates", params))

    def devices(self, labels: list[str] | None = None) -> list[DeviceOut]:
        """Every device the hub has heard from, or those whose labels match every ``k=v`` term."""
        return self._parse(_DEVICES, self._request("GET", "/v1/devices", {"label": labels or None}))

    def update_labels(self, device: str, set_: dict[str, str], remove: list[str]) -> dict[str, str]:
        """Set then remove labels of ``device``; its labels afterwards."""
        body = {"set": set_, "remove": remove}
        path = f"/v1/devices/{_seg(device)}/labels"
        return self._parse(_LABELS, self._request("PUT", path, {}, body))

    def device(self, device: str) -> DeviceDetailOut:
        """One device in detail: reported counters, loss ledger, alarms, last refusal."""
        return self._parse(_DEVICE, self._request("GET", f"/v1/devices/{_seg(device)}", {}))

    def desired(self, device: str) -> DesiredOut:
        """The device's current desired-state document and version."""
        return self._parse(_DESIRED, self._request("GET", f"/v1/devices/{_seg(device)}/desired", {}))

    def handlers(self) -> list[HandlerOut]:
        return self._parse(_HANDLERS, self._request("GET", "/v1/handlers", {}))

    def handler(self, name: str) -> HandlerOut:
        return self._parse(_HANDLER, self._request("GET", f"/v1/handlers/{_seg(name)}", {}))

    def put_handler(self, spec: dict[str, Any], *, replace: bool = False, version: str | None = None) -> ChangeOut:
        """Create a handler from a HandlerSpec-shaped ``spec`` (the hub validates it), or replace one; its image
        is the release ``version`` (default: ``initial`` for a new handler)."""
        params = {"version": version}
        if replace:
            path = f"/v1/handlers/{_seg(str(spec['name']))}"
            return self._parse(_CHANGE, self._request("PUT", path, params, spec))
        return self._parse(_CHANGE, self._request("POST", "/v1/handlers", params, spec))

    def remove_handler(self, name: str) -> ChangeOut:
        return self._parse(_CHANGE, self._request("DELETE", f"/v1/handlers/{_seg(name)}", {}))

    def subscriptions(self) -> list[SubscriptionOut]:
        return self._parse(_SUBSCRIPTIONS, self._request("GET", "/v1/subscriptions", {}))

    def subscription(self, name: str) -> SubscriptionOut:
        return self._parse(_SUBSCRIPTION, self._request("GET", f"/v1/subscriptions/{_seg(name)}", {}))

    def put_subscription(self, target: list[str], spec: dict[str, Any], *, replace: bool = False) -> ChangeOut:
        """Create a subscription for the devices matching ``target`` (k=v terms), or replace one."""
        body = {"target": target, "spec": spec}
        if replace:
            path = f"/v1/subscriptions/{_seg(str(spec['name']))}"
            return self._parse(_CHANGE, self._request("PUT", path, {}, body))
        return self._parse(_CHANGE, self._request("POST", "/v1/subscriptions", {}, body))

    def remove_subscription(self, name: str) -> ChangeOut:
        return self._parse(_CHANGE, self._request("DELETE", f"/v1/subscriptions/{_seg(name)}", {}))

    def releases(self, handler: str) -> list[ReleaseOut]:
        return self._parse(_RELEASES, self._request("GET", f"/v1/handlers/{_seg(handler)}/releases", {}))

    def add_release(
        self, handler: str, version: str, *, image: str | None = None, local_id: str | None = None
    ) -> ReleaseOut:
        """Record a release: ``image`` (a registry tag is resolved to its digest by the hub) or ``local_id``."""
        body = {"version": version, "image": image, "local_id": local_id}
        path = f"/v1/handlers/{_seg(handler)}/releases"
        return self._parse(_RELEASE, self._request("POST", path, {}, {k: v for k, v in body.items() if v is not None}))

    def rollouts(self, handler: str | None = None) -> list[RolloutOut]:
        return self._parse(_ROLLOUTS, self._request("GET", "/v1/rollouts", {"handler": handler}))

    def rollout(self, rollout_id: int) -> RolloutOut:
        return self._parse(_ROLLOUT, self._request("GET", f"/v1/rollouts/{rollout_id}", {}))

    def start_rollout(self, body: dict[str, Any]) -> RolloutOut:
        """Start a rollout from a RolloutIn-shaped ``body`` (the hub validates it)."""
        return self._parse(_ROLLOUT, self._request("POST", "/v1/rollouts", {}, body))

    def control_rollout(self, rollout_id: int, command: str) -> RolloutOut:
        """``pause``, ``resume``, ``abort`` or ``undo``."""
        return self._parse(_ROLLOUT, self._request("POST", f"/v1/rollouts/{rollout_id}/{_seg(command)}", {}))

    def _request(self, method: str, path: str, params: dict[str, Any], body: Any = None) -> Any:
        query = {key: value for key, value in params.items() if value is not None}
        try:
            response = self._http.request(method, path, params=query, json=body)
        except httpx.ConnectError as exc:
            raise ClientError(f"cannot reach the hub at {self.base_url} ({exc}): is `hub serve` running?") from exc
        except httpx.TimeoutException as exc:
            raise ClientError(f"the hub at {self.base_url} did not answer in time") from exc
        except httpx.HTTPError as exc:
            raise ClientError(f"request to the hub at {self.base_url} failed: {exc}") from exc
        if response.status_code == 401:
            if self._has_token:
                raise ClientError("the hub refused the token", status=401)
            raise ClientError(f"the hub needs a token: pass --token or set {TOKEN_ENV}", status=401)
        if response.is_error:
            details = _details(response)
            raise ClientError(
                f"the hub answered {response.status_code}: {'; '.join(details)}",
                status=response.status_code,
                details=details,
            )
        try:
            return response.json()
        except ValueError as exc:
            raise ClientError(f"the hub at {self.base_url} answered something that is not JSON") from exc

    def _parse(self, adapter: TypeAdapter[T], data: Any) -> T:
        try:
            return adapter.validate_python(data)
        except ValidationError as exc:
            raise ClientError(f"unexpected answer from the hub at {self.base_url}: {exc.errors()[0]['msg']}") from exc


def _seg(value: str) -> str:
    return quote(value, safe="")


def _details(response: httpx.Response) -> list[str]:
    """FastAPI's ``detail``: one line per validation error (``spec.window: ...``), else the text or body."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return [response.text[:200] or response.reason_phrase]
    if isinstance(detail, list):
        lines = []
        for err in detail:
            loc = ".".join(str(p) for p in err.get("loc", []) if p not in ("query", "body"))
            lines.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
        return lines
    return [str(detail)]
