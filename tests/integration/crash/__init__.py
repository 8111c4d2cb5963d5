"""Issue 17: the control plane killed with SIGKILL at random moments, in both deployments."""
