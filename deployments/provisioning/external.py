"""External build mode: a build is made of what CI reported for each component at its commit."""

from deployments.models import Build, BuildStatus, CIReport

HEADER = "CI builds this release (external build mode).\n"


def take_external_build(build: Build, project_id: int, components: list[str]) -> bool | None:
    """Bring the build up to what CI reported: True when every component has its image (the build is
    the release), False when CI reported a failure, None while still waiting."""
    reports = {r.component: r for r in CIReport.objects.filter(project_id=project_id, commit=build.commit, component__in=components)}
    done = [c for c in components if c in reports and reports[c].status == BuildStatus.SUCCEEDED]
    failed = [c for c in components if c in reports and reports[c].status == BuildStatus.FAILED]
    log = HEADER + "".join(f"{_line(c, reports.get(c))}\n" for c in components)
    if build.status == BuildStatus.QUEUED:
        build.start()
    build.log = log
    build.external_url = next((reports[c].url for c in components if c in reports and reports[c].url), "")
    build.advance("build", 100 * len(done) // len(components) if components else 100)
    if failed:
        message = reports[failed[0]].message
        build.fail("build", f"CI: {failed[0]} failed{': ' + message if message else ''}")
        return False
    if len(done) == len(components):
        build.succeed(images={c: reports[c].image for c in components})
        return True
    build.save_progress()
    return None


def _line(component: str, report: CIReport | None) -> str:
    if report is None:
        return f"{component}: waiting for CI"
    if report.status == BuildStatus.SUCCEEDED:
        return f"{component}: image {report.image}"
    return f"{component}: {report.status}{': ' + report.message if report.message else ''}"
