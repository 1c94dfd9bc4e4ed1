"""Drives Berth's management API with harborapi, a Harbor client from PyPI.

Run by crates/berth/tests/harbor_api.rs in two phases around a push made with skopeo:

    drive.py setup URL ADMIN_PASSWORD STATE_FILE   users, a private project, a member, a robot
    drive.py content URL ADMIN_PASSWORD STATE_FILE repositories, artifacts, tags, audit logs,
                                                   then deleting everything

The setup phase writes the robot's name and secret (and the ids it made) to STATE_FILE as JSON.
Every check raises with a message; the test prints stderr when the script fails.
"""

import asyncio
import json
import sys

from harborapi import HarborAsyncClient
from harborapi.exceptions import (
    Conflict,
    Forbidden,
    NotFound,
    PreconditionFailed,
    Unauthorized,
)
from harborapi.models import (
    Access,
    ProjectMetadata,
    ProjectReq,
    RobotCreate,
    RobotPermission,
    Tag,
    UserCreationReq,
    UserProfile,
)

PASSWORD = "Passw0rdX"


def check(cond, what):
    if not cond:
        raise AssertionError(what)


async def expect(exc, coro, what):
    try:
        await coro
    except exc:
        return
    raise AssertionError(f"{what}: expected {exc.__name__}")


async def setup(c, url, state):
    check(await c.ping() == "Pong", "ping")
    info = await c.get_system_info()
    check(info.harbor_version.startswith("berth-"), f"version {info.harbor_version}")
    check(info.auth_mode == "db_auth", f"auth mode {info.auth_mode}")
    health = await c.health_check()
    check(health.status == "healthy", f"health {health}")

    for i in range(12):
        location = await c.create_user(
            UserCreationReq(
                username=f"user{i:02}",
                email=f"user{i:02}@example.com",
                realname=f"User {i}",
                password=PASSWORD,
                comment="made by harborapi",
            )
        )
        check(location.startswith("/api/v2.0/users/"), f"location {location}")
    await expect(
        Conflict,
        c.create_user(
            UserCreationReq(username="user00", email="x@example.com", password=PASSWORD)
        ),
        "a second user00",
    )
    users = await c.get_users()
    check(len(users) == 13, f"all users through the Link pages: {len(users)}")
    fuzzy = await c.get_users(query="username=~user0")
    check(len(fuzzy) == 10, f"users matching user0: {[u.username for u in fuzzy]}")
    one_page = await c.get("/users", params={"page": 2, "page_size": 5}, follow_links=False)
    check([u["username"] for u in one_page] == ["user04", "user05", "user06", "user07", "user08"],
          f"page 2 of 5: {one_page}")
    user01 = await c.get_user_by_username("user01")
    check(user01.email == "user01@example.com", f"user01 {user01}")
    await c.update_user(user01.user_id, UserProfile(email="one@example.com", realname="One"))
    check((await c.get_user(user01.user_id)).realname == "One", "profile updated")
    me = await c.get_current_user()
    check(me.username == "admin" and me.sysadmin_flag, f"current user {me}")

    location = await c.create_project(
        ProjectReq(project_name="team", metadata=ProjectMetadata(public="false"))
    )
    check(location.startswith("/api/v2.0/projects/"), f"project location {location}")
    await expect(Conflict, c.create_project(ProjectReq(project_name="team")), "second team")
    check(await c.project_exists("team"), "team exists")
    check(not await c.project_exists("absent"), "absent does not exist")
    project = await c.get_project("team")
    check(project.name == "team" and project.metadata.public == "false", f"team {project}")
    check(project.owner_name == "admin", f"owner {project.owner_name}")
    by_id = await c.get_project(project.project_id)
    check(by_id.name == "team", "project by id")
    for n in range(3):
        await c.create_project(ProjectReq(project_name=f"extra{n}", public=True))
    projects = await c.get_projects()
    check({"team", "extra0", "extra1", "extra2"} <= {p.name for p in projects}, "project list")
    public = await c.get_projects(public=True)
    check("team" not in {p.name for p in public}, "team is private")

    await c.add_project_member_user("team", "user01", 2)
    await c.add_project_member_user("team", user01.user_id + 1, 3)
    members = await c.get_project_members("team")
    roles = {m.entity_name: m.role_name for m in members}
    check(roles.get("user01") == "developer", f"members {roles}")
    check(roles.get("user02") == "guest", f"members {roles}")
    check(roles.get("admin") == "projectAdmin", f"the creator is project admin: {roles}")

    robot = await c.create_robot(
        RobotCreate(
            name="ci",
            description="pushes from CI",
            level="project",
            duration=-1,
            disable=False,
            permissions=[
                RobotPermission(
                    kind="project",
                    namespace="team",
                    access=[
                        Access(resource="repository", action="pull"),
                        Access(resource="repository", action="push"),
                    ],
                )
            ],
        )
    )
    check(robot.name == "robot$team+ci", f"robot name {robot.name}")
    check(robot.secret, "robot secret")
    robots = await c.get_robots(query=f"Level=project,ProjectID={project.project_id}")
    check([r.name for r in robots] == ["robot$team+ci"], f"robots {robots}")
    fetched = await c.get_robot(robot.id)
    check(fetched.description == "pushes from CI", f"robot {fetched}")
    refreshed = await c.refresh_robot_secret(robot.id, "")
    check(refreshed.secret and refreshed.secret != robot.secret, "a new secret")

    json.dump(
        {
            "robot": robot.name,
            "secret": refreshed.secret,
            "robot_id": robot.id,
            "project_id": project.project_id,
            "user_ids": [u.user_id for u in users if u.username != "admin"],
        },
        open(state, "w"),
    )


async def content(c, url, state):
    s = json.load(open(state))
    repos = await c.get_repositories("team")
    check(sorted(r.name for r in repos) == ["team/app", "team/tools/lint"], f"repos {repos}")
    app = await c.get_repository("team", "app")
    check(app.artifact_count == 1 and app.project_id == s["project_id"], f"app {app}")
    nested = await c.get_repository("team", "tools/lint")
    check(nested.name == "team/tools/lint", f"nested repository {nested}")

    artifacts = await c.get_artifacts("team", "app")
    check(len(artifacts) == 1, f"artifacts {artifacts}")
    art = artifacts[0]
    check([t.name for t in art.tags] == ["v1"], f"tags {art.tags}")
    check(art.digest == s["digest"], f"digest {art.digest} != pushed {s['digest']}")
    check(art.size > 0 and art.type == "IMAGE", f"artifact {art}")
    by_tag = await c.get_artifact("team", "app", "v1")
    check(by_tag.digest == art.digest, "artifact by tag")
    nested_art = await c.get_artifacts("team", "tools/lint")
    check(len(nested_art) == 1, f"nested artifacts {nested_art}")

    await c.create_artifact_tag("team", "app", art.digest, Tag(name="stable"))
    tags = await c.get_artifact_tags("team", "app", art.digest)
    check(sorted(t.name for t in tags) == ["stable", "v1"], f"tags after adding {tags}")
    await expect(
        Conflict,
        c.create_artifact_tag("team", "app", art.digest, Tag(name="v1")),
        "an existing tag",
    )
    await c.delete_artifact_tag("team", "app", art.digest, "stable")
    tags = await c.get_artifact_tags("team", "app", "v1")
    check([t.name for t in tags] == ["v1"], f"tags after deleting {tags}")
    await expect(NotFound, c.get_artifact("team", "app", "stable"), "a deleted tag")

    logs = await c.get_audit_logs(query="operation=create,resource_type=project")
    check({"team", "extra0"} <= {l.resource for l in logs}, f"project creations {logs}")
    logs = await c.get_audit_logs(query="username=admin,resource=~user0", limit=100)
    check(any(l.resource == "user00" and l.operation == "create" for l in logs), f"user logs {logs}")
    plogs = await c.get_project_logs("team", limit=100)
    kinds = {(l.operation, l.resource_type, l.resource) for l in plogs}
    check(("create", "member", "team/user01") in kinds, f"project logs {kinds}")
    by = {(l.operation, l.resource_type, l.resource): l.username for l in plogs}
    check(by.get(("create", "artifact", "team/app:v1")) == "robot$team+ci", f"the push {by}")
    check(by.get(("create", "artifact", "team/app:stable")) == "admin", f"the tag added {by}")
    check(by.get(("delete", "tag", "team/app:stable")) == "admin", f"the tag deleted {by}")

    await expect(PreconditionFailed, c.delete_project("team"), "a project with repositories")
    await c.delete_artifact("team", "tools/lint", "v1")
    await expect(NotFound, c.get_repository("team", "tools/lint"), "an emptied repository")
    await c.delete_repository("team", "app")
    check(await c.get_repositories("team") == [], "no repositories left")
    await c.delete_robot(s["robot_id"])
    await expect(NotFound, c.get_robot(s["robot_id"]), "a deleted robot")
    members = await c.get_project_members("team")
    for m in members:
        if m.entity_name != "admin":
            await c.remove_project_member("team", m.id)
    check(len(await c.get_project_members("team")) == 1, "only the admin is left")
    await c.delete_project("team")
    await expect(NotFound, c.get_project("team"), "a deleted project")
    for uid in s["user_ids"]:
        await c.delete_user(uid)
    check([u.username for u in await c.get_users()] == ["admin"], "only admin is left")
    logs = await c.get_audit_logs(query="operation=delete", limit=100)
    deleted = {(l.resource_type, l.resource) for l in logs}
    for want in [("project", "team"), ("robot", "robot$team+ci"), ("user", "user05"),
                 ("member", "team/user01"), ("repository", "team/app"),
                 ("artifact", f"team/app@{s['digest']}")]:
        check(want in deleted, f"{want} in the deletions {deleted}")

    stranger = HarborAsyncClient(url=url + "/api/v2.0", username="nobody", secret="Wr0ngpassword")
    await expect(Unauthorized, stranger.get_projects(), "a wrong password")


async def main():
    phase, url, password, state = sys.argv[1:5]
    c = HarborAsyncClient(url=url + "/api/v2.0", username="admin", secret=password)
    await {"setup": setup, "content": content}[phase](c, url, state)
    print(f"{phase}: ok")


if __name__ == "__main__":
    asyncio.run(main())
