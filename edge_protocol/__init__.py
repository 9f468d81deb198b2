"""The wire contract shared by the edge agent and the hub.

Everything that crosses a process boundary is defined here once (cloud-broker messages, the handler
stdin/stdout protocol, the subscription and handler specs, the mergeable aggregate state, topic names and the
dead-letter record) so that agent and hub cannot drift apart; so is how both load their configs. This
package imports pydantic (and pydantic-settings), orjson and ddsketch only.
"""

PROTOCOL_VERSION = 1
