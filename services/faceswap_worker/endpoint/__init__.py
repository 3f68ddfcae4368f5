"""A loopback server that speaks the RunPod Serverless queue API and runs the real handler in worker processes."""
