"""The keys a record is indexed under, read from its properties without decoding most of them.

A record with ``FLAG_INDEXED`` is indexed under each of its user keys (the ``KEYS``
property, space separated) and its unique id (``UNIQ_KEY``). Decoding every record's
msgpack properties cost more than a microsecond a message on the send path, where almost
every record comes from an SDK draft template: the same property bytes, then a 32-character
unique id as the very last value. ``KeyReader`` learns such a *shape* from one record it
decodes in full and reads later records of the shape with one comparison and one copy::

    properties = map header | entries ... | "UNIQ_KEY" | d9 20 | 32 bytes of id
                 \\_____________ prefix (learnt once) _________/ \\_ read _/

Why that is exact: a shape is learnt only when re-encoding the decoded map gives back the
very same bytes (so there are no duplicate keys and every token has its canonical size) and
the map's last entry is ``UNIQ_KEY`` with a 32-character ASCII value, whose 34 encoded bytes
(str8 header ``d9 20`` + payload) end the block. A msgpack parse goes left to right, so any
block with the same length and the same bytes before the payload parses into the same
tokens, the payload being the id's text; an ASCII payload always decodes. Anything else
takes the full decode, with its checks and its errors.

Keys are returned as UTF-8 bytes (``read``), or straight away as the index's hashes of
``topic#key`` (``read_batch``, a whole batch in one loop): no decode and no encode per key
(see ``KeyIndex.put_hashes``).
"""

from __future__ import annotations

from typing import Final, final

import msgpack

from tidemq.common.buffers import Buffer
from tidemq.protocol.record import (
    KEY_SEPARATOR,
    PROPERTY_KEYS,
    PROPERTY_UNIQUE_ID,
    decode_properties,
)
from tidemq.store.index import key_hash_continued
from tidemq.store.native import NATIVE

SHAPE_UNIQUE_ID_BYTES: Final = 32
"""The unique-id length a shape is learnt for (the SDK's: 32 hex digits)."""
_SHAPES_MAX: Final = 64
"""Shapes remembered (one per producer template in use); more start the table over."""


@final
class KeyReader:
    """Reads the keys of indexed records; remembers the shapes it has seen (see above)."""

    __slots__ = ("_shapes",)

    def __init__(self) -> None:
        self._shapes: dict[int, tuple[bytes, list[bytes]]] = {}
        """properties length -> (bytes before the id, the user keys)"""

    def read(self, view: memoryview, start: int, length: int) -> list[bytes]:
        """The user keys, then the unique id (if any), of the properties block at
        ``view[start:start + length]``, as UTF-8 bytes.

        Raises:
            ProtocolError: the block is not a msgpack map of strings to strings.
        """
        shape = self._shapes.get(length)
        if shape is not None:
            id_start = start + length - SHAPE_UNIQUE_ID_BYTES
            if view[start:id_start] == shape[0]:
                unique_id = bytes(view[id_start:start + length])
                if unique_id.isascii():
                    return [*shape[1], unique_id]
        return self._read_slowly(view[start:start + length])

    def read_batch(self, data: bytes, blocks: list[tuple[int, int, int]],
                   seed: int) -> list[tuple[int, int]]:
        """The index keys of a batch's records: ``blocks`` are (record number, where its
        properties start in ``data``, their length); the answer is (record number,
        ``key_hash_continued(key, seed)``) per key, in order. ``read``, with its fast path
        inlined: this loop runs once per message sent; in C (``native``) when every block
        has a learnt shape.

        Raises:
            ProtocolError: a block is not a msgpack map of strings to strings.
        """
        if NATIVE is not None:
            hashed = NATIVE.key_hashes(data, blocks, self._shapes, seed)
            if hashed is not None:  # every block had a learnt shape
                keys_found: list[tuple[int, int]] = hashed
                return keys_found
        keys: list[tuple[int, int]] = []
        add = keys.append
        hash_key = key_hash_continued
        shapes = self._shapes
        view = memoryview(data)
        for number, start, length in blocks:
            shape = shapes.get(length)
            # the SDK's common case: a learnt shape, an id alone
            if shape is not None and not shape[1] and data.startswith(shape[0], start):
                unique_id = data[start + length - SHAPE_UNIQUE_ID_BYTES:start + length]
                if unique_id.isascii():
                    add((number, hash_key(unique_id, seed)))
                    continue
            for key in self.read(view, start, length):
                add((number, hash_key(key, seed)))
        return keys

    def _read_slowly(self, block: Buffer) -> list[bytes]:
        properties = decode_properties(block)
        user_keys = [key.encode() for key in
                     properties.get(PROPERTY_KEYS, "").split(KEY_SEPARATOR) if key]
        unique_id = properties.get(PROPERTY_UNIQUE_ID)
        if not unique_id:
            return user_keys
        if len(unique_id) == SHAPE_UNIQUE_ID_BYTES and unique_id.isascii() and \
                next(reversed(properties)) == PROPERTY_UNIQUE_ID:
            data = bytes(block)
            if msgpack.packb(properties, use_bin_type=True) == data:
                if len(self._shapes) >= _SHAPES_MAX:
                    self._shapes.clear()
                self._shapes[len(data)] = (data[:-SHAPE_UNIQUE_ID_BYTES], user_keys)
        return [*user_keys, unique_id.encode()]
