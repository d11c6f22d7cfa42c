"""Reads and prepares Kafka topics for the pgevents tests, with a client that is not
pgevents' own: confluent-kafka (its wheel carries a current librdkafka).

    kafka.py create BROKERS TOPIC PARTITIONS   create a topic (error if it exists)
    kafka.py delete BROKERS TOPIC              delete a topic
    kafka.py consume BROKERS TOPIC             every message, one JSON line each, in
                                               (partition, offset) order:
    {"partition": 0, "offset": 0, "key": "..." or null, "headers": {"name": "value"}, "value": "<hex>"}

Exits 1 with the reason on standard error when the broker does not answer in time.
"""

import binascii
import json
import sys

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

TIMEOUT = 15.0


def admin(brokers):
    return AdminClient({"bootstrap.servers": brokers})


def create(brokers, topic, partitions):
    futures = admin(brokers).create_topics(
        [NewTopic(topic, num_partitions=int(partitions), replication_factor=1)],
        operation_timeout=TIMEOUT, request_timeout=TIMEOUT)
    futures[topic].result(timeout=TIMEOUT)


def delete(brokers, topic):
    futures = admin(brokers).delete_topics([topic], operation_timeout=TIMEOUT,
                                           request_timeout=TIMEOUT)
    futures[topic].result(timeout=TIMEOUT)


def consume(brokers, topic):
    consumer = Consumer({
        "bootstrap.servers": brokers,
        "group.id": "pgevents-test-reader",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    })
    metadata = consumer.list_topics(topic, timeout=TIMEOUT).topics[topic]
    if metadata.error is not None:
        raise KafkaException(metadata.error)
    ends = {}
    for partition in sorted(metadata.partitions):
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                   timeout=TIMEOUT)
        if high > low:
            ends[partition] = high
    messages = []
    if ends:
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        remaining = dict(ends)
        while remaining:
            message = consumer.poll(TIMEOUT)
            if message is None:
                raise KafkaException(f"no message within {TIMEOUT} s; still to read: {remaining}")
            if message.error() is not None:
                raise KafkaException(message.error())
            partition, offset = message.partition(), message.offset()
            messages.append(message_json(message))
            if offset + 1 >= remaining.get(partition, 0):
                remaining.pop(partition, None)
    consumer.close()
    messages.sort(key=lambda m: (m["partition"], m["offset"]))
    for m in messages:
        print(json.dumps(m))


def message_json(message):
    key = message.key()
    return {
        "partition": message.partition(),
        "offset": message.offset(),
        "key": None if key is None else key.decode("utf-8"),
        "headers": {k: (None if v is None else v.decode("utf-8"))
                    for k, v in (message.headers() or [])},
        "value": binascii.hexlify(message.value() or b"").decode("ascii"),
    }


def main(argv):
    commands = {"create": create, "delete": delete, "consume": consume}
    if len(argv) < 2 or argv[1] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        commands[argv[1]](*argv[2:])
    except Exception as error:  # the Rust test shows this text
        print(f"kafka.py {' '.join(argv[1:])}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
