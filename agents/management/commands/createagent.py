import json

from django.core.management.base import BaseCommand, CommandError

from agents.services import agent_create
from audit.services import Actor
from ordinaut.errors import OrdinautError
from ordinaut.logging import log_to_stderr


class Command(BaseCommand):
    help = "Create an agent with a secret credential; prints its id and the secret once."

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("name")
        parser.add_argument(
            "--scopes", default="", help="comma-separated scopes, e.g. tasks:read,tasks:write"
        )
        parser.add_argument("--description", default="")
        parser.add_argument(
            "--json", action="store_true", help="print exactly one JSON object on stdout"
        )

    def handle(self, *args, **options) -> None:  # noqa: ANN002, ANN003
        log_to_stderr()
        try:
            agent, secret = agent_create(
                name=options["name"],
                scopes=options["scopes"].split(","),
                description=options["description"],
                actor=Actor.system("createagent"),
            )
        except OrdinautError as exc:
            raise CommandError(exc.message) from exc
        if options["json"]:
            result = {"id": str(agent.id), "name": agent.name, "scopes": agent.scopes}
            self.stdout.write(json.dumps({**result, "secret": secret}))
            return
        self.stdout.write(f"Agent:  {agent.name}\nId:     {agent.id}")
        self.stdout.write(f"Scopes: {', '.join(agent.scopes) or '(none)'}")
        self.stdout.write(f"Secret: {secret}")
        self.stdout.write(
            self.style.WARNING(
                "Store the secret now: it is kept only as a hash and never shown again."
            )
        )
