"""A stand-in for the CBC proxy Lambdas, for the demo and the tests.

It speaks the AWS Lambda ``Invoke`` HTTP API, so an unmodified boto3 client pointed at it with
``endpoint_url`` calls it as it would call AWS. It validates every payload against its own copy
of the payload contract (docs/behaviour.md §3), renders the XML a real proxy would send to the mobile
network (CAP 1.2 checked against the OASIS schema, or IBAG for Vodafone), records every
invocation, and lets a test inject faults per function.

It imports nothing from ``broadcasts`` on purpose: a payload bug in the product must not be able
to validate itself here.
"""
