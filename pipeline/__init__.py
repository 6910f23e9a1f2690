"""posestream's streaming framework: message schema, transport, stage API, graph, supervisor.

Nothing in this package imports torch.
"""
