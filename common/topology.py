"""Every JetStream stream and a service's durable consumers, created or
brought in line with contracts/subjects.py at start; safe to repeat, and
from any number of instances at once."""
from __future__ import annotations

import logging

from nats.js import JetStreamContext
from nats.js.api import (AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType,
                         StreamConfig)
from nats.js.errors import BadRequestError, NotFoundError

from contracts.subjects import STREAMS, ConsumerDef

log = logging.getLogger("corral.bus")


async def ensure_streams(js: JetStreamContext, replicas: int) -> None:
    """Each stream with `replicas` copies, or more if it has them already:
    start-up never scales a stream down (an operator's R3 stays R3)."""
    for s in STREAMS:
        want = replicas
        try:
            have = (await js.stream_info(s.name)).config.num_replicas or 1
        except NotFoundError:
            have = 0
        if have > want:
            log.warning("stream %s keeps its %d replicas (CORRAL_STREAM_REPLICAS=%d asks for "
                        "fewer; scale it down by hand if that is meant)", s.name, have, want)
            want = have
        cfg = StreamConfig(
            name=s.name, subjects=list(s.subjects), retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE, max_age=s.max_age_s, num_replicas=want,
            max_msgs_per_subject=s.max_msgs_per_subject,
            duplicate_window=s.duplicate_window_s, description=s.description)
        if have == 0:
            try:
                await js.add_stream(cfg)
                continue
            except BadRequestError:  # another instance made it meanwhile
                pass
        await js.update_stream(cfg)


async def ensure_consumer(js: JetStreamContext, c: ConsumerDef) -> None:
    cfg = ConsumerConfig(
        durable_name=c.durable, ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL, ack_wait=c.ack_wait_s,
        max_deliver=c.max_deliver + 1, max_ack_pending=c.max_ack_pending,
        description=c.description,
        **({"filter_subject": c.filter_subjects[0]} if len(c.filter_subjects) == 1
           else {"filter_subjects": list(c.filter_subjects)}))
    try:
        await js.add_consumer(c.stream, cfg)
    except BadRequestError as e:  # exists with other settings: update in place
        log.info("updating consumer %s: %s", c.durable, e.description)
        await js.add_consumer(c.stream, cfg)
