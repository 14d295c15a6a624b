"""YAML from users (stack and package files, what a package's chart renders) read without its traps:
PyYAML's safe loader, refusing aliases and bounding the number of values.

Shared by `projects` (stack files) and the Kubernetes runtime (charts), which may not import each other."""

import yaml

MAX_NODES = 5_000  # YAML nodes per file: far above any real stack (a package has ~100), parsed in ~0.1 s


class BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing aliases (`*name`, which multiply a document's size) and
    documents of more than `max_nodes` nodes."""

    max_nodes = MAX_NODES

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"uses the alias *{event.anchor}; aliases are not allowed here (write the value out)", event.start_mark
            )
        self.nodes = getattr(self, "nodes", 0) + 1
        if self.nodes > self.max_nodes:
            raise yaml.composer.ComposerError(None, None, f"has more than {self.max_nodes} values", self.peek_event().start_mark)
        return super().compose_node(parent, index)
