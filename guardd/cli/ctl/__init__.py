"""guardctl, the operator's tool."""
