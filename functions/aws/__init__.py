"""AWS Lambda adapters (see ``functions.aws.handler``)."""
