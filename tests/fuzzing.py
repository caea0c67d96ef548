"""Hypothesis strategies for fuzzing gRPC services from their descriptors alone.

`requests_for(method, known)` draws request bodies for any RPC: a message of the method's input
type with random and extreme values in every field, or raw bytes that may not be a message at
all. String fields often get real values (ids, emails, tokens) so that calls get past the first
checks: `known` maps a field name ending (`wallet_id`, `email`) to values for such fields, and
`""` to values for any string field. `metadata()` draws what a caller may send: mostly a real
token, else nothing, garbage, a near miss or two authorization entries. Nothing here names an
RPC, so RPCs added later are fuzzed as they are.
"""

import string
from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import descriptor as protobuf_descriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

FieldDescriptor = protobuf_descriptor.FieldDescriptor
INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
MAX_DEPTH = 3

# Text that stresses a service: control characters, NUL, right-to-left marks, characters that
# NFKC grows 18-fold, astral planes. Lone surrogates cannot be sent (not UTF-8).
_any_text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=64)
_nasty_text = st.sampled_from(
    ["", " ", "\x00", "a\x00b", "\n", "\u202e", "\ufdfa", "\U0001f4b8", "null", "-1", "0"]
)
_long_text = st.builds(
    lambda piece, count: piece * count,
    st.sampled_from(["x", "\ufdfa", "é", "[", "\x00"]),
    st.integers(min_value=100, max_value=6000),
)


Known = Mapping[str, Sequence[str]]


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, each as often as its weight says."""
    pool = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(pool).flatmap(lambda strategy: strategy)


def text_values(field_name: str, known: Known) -> st.SearchStrategy[str]:
    """Any string, often a real value for a field of this name, or a near miss of one."""
    endings = [ending for ending in known if ending and field_name.endswith(ending)]
    values = list(known[max(endings, key=len)]) if endings else list(known.get("", ()))
    if not values:
        return st.one_of(_any_text, _nasty_text, _long_text)
    exact = st.sampled_from(values)
    near = st.builds(_near_miss, exact, st.integers(0, 3))
    return weighted((4, exact), (1, near), (1, _any_text), (1, _nasty_text), (1, _long_text))


def _near_miss(value: str, how: int) -> str:
    """`value` changed a little: a character flipped, cut short, doubled, padded."""
    if not value:
        return "x"
    return [
        value[:-1] + ("A" if value[-1] != "A" else "B"),
        value[: len(value) // 2],
        value + value,
        f" {value} ",
    ][how]


def _scalar(field: FieldDescriptor, known: Known) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_STRING:
        return text_values(field.name, known)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=256)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(width=64 if field.type == FieldDescriptor.TYPE_DOUBLE else 32)
    if field.type == FieldDescriptor.TYPE_ENUM:
        declared = [value.number for value in field.enum_type.values]
        # proto3 enums are open: numbers nobody declared arrive too.
        return st.one_of(st.sampled_from(declared), st.integers(-(2**31), 2**31 - 1))
    low, high = INT_RANGES[field.type]
    edges = [0, 1, -1, low, high, low + 1, high - 1]
    return st.one_of(
        st.sampled_from([edge for edge in edges if low <= edge <= high]),
        st.integers(low, high),
    )


def messages(
    descriptor: protobuf_descriptor.Descriptor, known: Known, depth: int = 0
) -> st.SearchStrategy[Message]:
    """Messages of `descriptor`'s type with any subset of their fields set."""
    message_class = GetMessageClass(descriptor)
    fields = [field for field in descriptor.fields if depth < MAX_DEPTH or not _is_message(field)]

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = message_class()
        for field in fields:
            if not draw(st.booleans()):
                continue
            _set(message, field, draw, known, depth)
        return message

    return build()


def _is_message(field: FieldDescriptor) -> bool:
    return field.type == FieldDescriptor.TYPE_MESSAGE


def _set(
    message: Message, field: FieldDescriptor, draw: st.DrawFn, known: Known, depth: int
) -> None:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key_field, value_field = field.message_type.fields
        entries = draw(
            st.dictionaries(
                _value(key_field, known, depth + 1),
                _value(value_field, known, depth + 1),
                max_size=3,
            )
        )
        target = getattr(message, field.name)
        for key, value in entries.items():
            if _is_message(value_field):
                target[key].CopyFrom(value)
            else:
                target[key] = value
        return
    if field.is_repeated:
        values = draw(st.lists(_value(field, known, depth + 1), max_size=3))
        target = getattr(message, field.name)
        if _is_message(field):
            for value in values:
                target.add().CopyFrom(value)
        else:
            target.extend(values)
        return
    value = draw(_value(field, known, depth + 1))
    if _is_message(field):
        getattr(message, field.name).CopyFrom(value)
    else:
        setattr(message, field.name, value)


def _value(field: FieldDescriptor, known: Known, depth: int) -> st.SearchStrategy[Any]:
    if _is_message(field):
        return messages(field.message_type, known, depth)
    return _scalar(field, known)


def requests_for(
    method: protobuf_descriptor.MethodDescriptor, known: Known
) -> st.SearchStrategy[bytes]:
    """Serialized request bodies for `method`: mostly messages, sometimes raw bytes."""
    as_messages = messages(method.input_type, known).map(
        lambda message: message.SerializeToString()
    )
    return weighted((6, as_messages), (1, st.binary(max_size=512)))


_token_text = st.text(alphabet=string.ascii_letters + string.digits + "-_.=+/", max_size=400)


def metadata(tokens: Sequence[str]) -> st.SearchStrategy[tuple[tuple[str, str], ...]]:
    """Call metadata: none, a real token, garbage, a near miss, or two authorization entries."""
    real = st.sampled_from(list(tokens))
    bearer_values = st.one_of(real, st.builds(_near_miss, real, st.integers(0, 3)), _token_text)
    one = st.builds(lambda token: (("authorization", f"Bearer {token}"),), bearer_values)
    valid = st.builds(lambda token: (("authorization", f"Bearer {token}"),), real)
    odd = st.sampled_from(
        [
            (("authorization", "Bearer"),),
            (("authorization", "Basic dXNlcjpwYXNz"),),
            (("x-request-id", "r" * 60),),
        ]
    )
    two = st.builds(lambda first, second: (*first, *second), one, one)
    return weighted((7, valid), (1, st.just(())), (1, one), (1, st.one_of(odd, two)))
