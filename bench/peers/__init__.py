"""The peers: other Django mail queues, each in its own virtualenv under var/peers/."""
