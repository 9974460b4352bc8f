"""What the AWS and GCP provider tests share: each fake cloud behind one `World` interface, the
pytest fixtures that start and reset them, and the test bodies both clouds run."""
