import functools
from collections.abc import Callable

from django.core.paginator import Page, Paginator
from django.db import connection
from django.db.models import Model, OuterRef, QuerySet, Subquery

from accounts.models import SSHKey, User
from deployments.models import Build, Deployment, Domain, Sample, SSHSession, StateTransition
from projects.models import Membership, Project

SEP = "\x1f"  # between the values a fingerprint joins (the unit separator: in no name or reason)
RELEASES_SHOWN = 10  # the Overview's release history
SESSIONS_SHOWN = 10  # the Overview's recent SSH sessions


def deployments_shown() -> QuerySet[Deployment]:
    """Deployments as their pages and fragments show them: with the running release (its build log,
    read only on the release's own page, left out) and who pinned them."""
    return Deployment.objects.select_related("release", "pinned_by").defer("release__log", "release__steps")


def deployments_with_figures(project: Project) -> QuerySet[Deployment]:
    """The project's deployments with their latest CPU sample and last build, in one query (without
    their secrets: a list does not decrypt them)."""
    latest_sample = Sample.objects.filter(deployment=OuterRef("pk")).order_by("-at")
    last_build = Build.objects.filter(deployment=OuterRef("pk")).order_by("-created", "-pk")
    return (
        project.deployments.defer("credentials", "connections")
        .annotate(
            cpu=Subquery(latest_sample.values("cpu_percent")[:1]),
            last_build_status=Subquery(last_build.values("status")[:1]),
        )
        .order_by("name", "pk")
    )


PAGE_SIZE = 50


def deployments_page(project: Project, number: object) -> Page:
    """One page of the project's list; a missing or bad page number gives the nearest page."""
    return Paginator(deployments_with_figures(project), PAGE_SIZE).get_page(number)


def _columns(model: type[Model], alias: str, skip: tuple[str, ...] = ()) -> str:
    quote = connection.ops.quote_name
    return ", ".join(f"{alias}.{quote(f.column)}" for f in model._meta.concrete_fields if f.name not in skip)


def _tables() -> dict[str, str]:
    models = (Deployment, Project, Membership, Sample, Build, Domain, StateTransition, SSHSession, SSHKey, User)
    return {m.__name__: connection.ops.quote_name(m._meta.db_table) for m in models}


def _concat(*values: str) -> str:
    return f" || '{SEP}' || ".join(f"CAST({v} AS TEXT)" for v in values)


def _joined(vendor: str) -> Callable[..., str]:
    """An aggregate joining rows' values into one text (the database's own function for it)."""
    function = "string_agg" if vendor == "postgresql" else "group_concat"
    return lambda *values: f"{function}({_concat(*values)}, '{SEP}{SEP}')"


@functools.cache
def _overview_facts_sql(vendor: str) -> str:
    """One statement, written once per process from the models' own table and column names (the ORM
    would compile the same dozen subqueries again on every page view)."""
    table = _tables()
    joined = _joined(vendor)

    commit = connection.ops.quote_name("commit")  # a keyword in SQL
    history = joined("h.id", "h.status", "CASE WHEN h.pruned THEN 1 ELSE 0 END", f"h.{commit}")
    domains = joined("o.name", "CASE WHEN o.verified THEN 1 ELSE 0 END")
    productions = joined("t.id", "t.slug", "t.name", "t.state")
    sessions = joined("e.id", "COALESCE(e.exit_status, -1)", "CASE WHEN e.ended IS NULL THEN 0 ELSE 1 END")
    return f"""
SELECT m.role, {_columns(Deployment, "d", skip=("credentials",))}, {_columns(Project, "p")},
  (SELECT s.id FROM {table["Sample"]} s WHERE s.deployment_id = d.id ORDER BY s.at DESC LIMIT 1),
  (SELECT {_concat("b.id", "b.status", "b.progress", "LENGTH(b.log)")}
     FROM {table["Build"]} b WHERE b.deployment_id = d.id ORDER BY b.created DESC, b.id DESC LIMIT 1),
  (SELECT {history} FROM (SELECT id, status, pruned, {commit} FROM {table["Build"]} WHERE deployment_id = d.id
                          ORDER BY created DESC, id DESC LIMIT {RELEASES_SHOWN}) h),
  (SELECT {domains} FROM {table["Domain"]} o WHERE o.deployment_id = d.id),
  (SELECT {productions} FROM {table["Deployment"]} t
     WHERE d.stage = 'staging' AND t.project_id = d.project_id AND t.stage = 'production'),
  (SELECT MAX(x.id) FROM {table["StateTransition"]} x WHERE x.deployment_id = d.id),
  (SELECT {sessions} FROM (SELECT id, exit_status, ended FROM {table["SSHSession"]} WHERE deployment_id = d.id
                           ORDER BY started DESC, id DESC LIMIT {SESSIONS_SHOWN}) e),
  EXISTS (SELECT 1 FROM {table["SSHKey"]} k WHERE k.user_id = %s),
  EXISTS (SELECT 1 FROM {table["Deployment"]} q JOIN {table["Membership"]} qm ON qm.project_id = q.project_id
          WHERE q.slug = d.slug AND qm.user_id = %s AND q.id <> d.id)
FROM {table["Deployment"]} d
JOIN {table["Project"]} p ON p.id = d.project_id
JOIN {table["Membership"]} m ON m.project_id = p.id AND m.user_id = %s
WHERE p.slug = %s AND d.slug = %s"""


def overview_facts(user_id: int, project_slug: str, slug: str) -> tuple | None:
    """Everything a deployment's Overview shows, as one row of plain values, when the user is a member
    of its project (the first value is the role); None otherwise. A page is cached under these."""
    with connection.cursor() as cursor:
        cursor.execute(_overview_facts_sql(connection.vendor), [user_id, user_id, user_id, project_slug, slug])
        return cursor.fetchone()


@functools.cache
def _project_facts_sql(vendor: str) -> str:
    """The project page's statement: the project, its members, and one page of its list as the list
    shows it (the same order, figures and columns as `deployments_with_figures`)."""
    table = _tables()
    joined = _joined(vendor)
    members = joined("mm.user_id", "mm.role", "u.username")
    cpu = f"(SELECT s.cpu_percent FROM {table['Sample']} s WHERE s.deployment_id = d.id ORDER BY s.at DESC LIMIT 1)"
    built = f"(SELECT b.status FROM {table['Build']} b WHERE b.deployment_id = d.id ORDER BY b.created DESC, b.id DESC LIMIT 1)"
    # the stored tree whole: the list's status word is read from its items
    shown = ("d.id", "d.name", "d.slug", "d.stage", "d.branch", "d.state", "d.enabled", "d.state_reason", "d.status", "d.endpoints")
    row = _concat(*shown, f"COALESCE({cpu}, -1)", f"COALESCE({built}, '')")
    return f"""
SELECT m.role, {_columns(Project, "p")},
  (SELECT {members} FROM {table["Membership"]} mm JOIN {table["User"]} u ON u.id = mm.user_id WHERE mm.project_id = p.id),
  (SELECT COUNT(*) FROM {table["Deployment"]} c WHERE c.project_id = p.id),
  (SELECT {joined("r.line")} FROM (SELECT {row} AS line FROM {table["Deployment"]} d WHERE d.project_id = p.id
                                  ORDER BY d.name, d.id LIMIT {PAGE_SIZE} OFFSET %s) r)
FROM {table["Project"]} p
JOIN {table["Membership"]} m ON m.project_id = p.id AND m.user_id = %s
WHERE p.slug = %s"""


def project_facts(user_id: int, project_slug: str, number: int) -> tuple | None:
    """Everything the project page shows at page `number` (1-based), when the user is a member (the
    first value is the role, the second last the number of deployments); None otherwise."""
    with connection.cursor() as cursor:
        cursor.execute(_project_facts_sql(connection.vendor), [(number - 1) * PAGE_SIZE, user_id, project_slug])
        return cursor.fetchone()
