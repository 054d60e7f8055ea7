"""The one entity: a customer, after identity resolution."""

from feast import Entity, ValueType

customer = Entity(
    name="customer",
    join_keys=["customer_id"],
    value_type=ValueType.STRING,
    description="Opaque nexttouch customer id (source keys are resolved before features).",
)
