"""The graded course (notebooks/assignments) end to end: release, submissions, autograde, CSV, feedback.

One course is copied to a temporary folder, released and graded once for the whole module with the
instructor's command (`ltp-assignments`, started as the console script, with the environment's bin/
left off PATH), then every test reads that run. The submissions, for every assignment under source/:
the instructor's solution (alice), the untouched release (bob), and the wrong solution of
tests/data/wrong_solutions/<assignment>.yaml (carol). For a1_soft_mask also: a folder without a
notebook (dave), deleted and edited test cells (erin), a submission that raises (frank), one that
tries to read the gradebook and the hidden tests (grace), one that patches the assertion helpers
(heidi). The first grading run is killed after its first finished submission and run again; a later
run adds a submission that loops forever (ivan) and a copy of carol's (carol2).

wrong_solutions/*.yaml: {assignment, notebook, description, replace: [{old, new}], failing: [ids]}
(see the comment at the top of a1_soft_mask.yaml).
"""
from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import yaml

from ltp_core.teaching.assignments import executed

ROOT = Path(__file__).resolve().parents[1]
COURSE = ROOT / "notebooks" / "assignments"
ASSIGNMENTS = sorted(p.name for p in (COURSE / "source").iterdir() if p.is_dir())
WRONG = {p.stem: p for p in sorted((ROOT / "tests" / "data" / "wrong_solutions").glob("*.yaml"))}
CLI = Path(sys.executable).parent / "ltp-assignments"
A1 = "a1_soft_mask"


# -- building submissions -----------------------------------------------------------------

def _nbgrader(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


def _strip_markers(source: str) -> str:
    return "\n".join(line for line in source.splitlines() if "### BEGIN SOLUTION" not in line
                     and "### END SOLUTION" not in line)


def solved(course: Path, assignment: str, replace=()) -> nbformat.NotebookNode:
    """The released notebook with every solution cell filled in from the source notebook, after
    the exact-text replacements `replace` [(old, new)] (each must occur once in the source)."""
    source = nbformat.read(course / "source" / assignment / f"{assignment}.ipynb", as_version=4)
    for old, new in replace:
        hits = [c for c in source.cells if old in c.source]
        assert len(hits) == 1 and hits[0].source.count(old) == 1, \
            f"{assignment}: {old!r} must occur exactly once in the source notebook, found {len(hits)} cell(s)"
        hits[0].source = hits[0].source.replace(old, new)
    answers = {_nbgrader(c)["grade_id"]: _strip_markers(c.source) for c in source.cells if _nbgrader(c).get("solution")}
    nb = nbformat.read(course / "release" / assignment / f"{assignment}.ipynb", as_version=4)
    for cell in nb.cells:
        if _nbgrader(cell).get("solution"):
            cell.source = answers[_nbgrader(cell)["grade_id"]]
    return nb


def released(course: Path, assignment: str) -> nbformat.NotebookNode:
    return nbformat.read(course / "release" / assignment / f"{assignment}.ipynb", as_version=4)


def cell(nb, grade_id: str):
    return next(c for c in nb.cells if _nbgrader(c).get("grade_id") == grade_id)


def wrong_spec(assignment: str) -> dict:
    spec = yaml.safe_load(WRONG[assignment].read_text())
    missing = {"assignment", "notebook", "description", "replace", "failing"} - set(spec)
    assert not missing, f"{WRONG[assignment]} lacks {sorted(missing)}"
    assert spec["assignment"] == assignment and spec["notebook"] == f"{assignment}.ipynb"
    return spec


def submit(folder: Path, student: str, assignment: str, nb, name: str | None = None) -> None:
    path = folder / student / assignment / (name or f"{assignment}.ipynb")
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


ATTACK_READ = '''
import os
print("kernel user", os.getuid(), os.environ.get("LTP_SANDBOX_USER"), "in", os.getcwd())
for path in ["{course}/gradebook.db", "{course}/source/a1_soft_mask/a1_soft_mask.ipynb", "../../../gradebook.db",
             f"/proc/{{os.getppid()}}/cwd/gradebook.db"]:
    for mode in ("rb", "r+b"):
        try:
            with open(path, mode) as f:
                f.read(16)
            print("ATTACK", mode, path, "OK")
        except OSError as e:
            print("ATTACK", mode, path, type(e).__name__)
import resource
print("LIMITS cpu", resource.getrlimit(resource.RLIMIT_CPU)[0], "memory", resource.getrlimit(resource.RLIMIT_AS)[0])
try:
    block = bytearray(8 << 30)
    print("MEMORY 8 GiB OK")
except MemoryError:
    print("MEMORY 8 GiB MemoryError")
'''

ATTACK_PATCH = '''
import numpy.testing
import torch.testing
import ltp_core
import ltp_core.core.mask


class _Agrees:  # ltp_core's reference, bent to agree with this submission
    @staticmethod
    def apply(w, tau, T, exact):
        return SoftMask.apply(w, tau, float(T), exact), None


torch.testing.assert_close = numpy.testing.assert_allclose = lambda *args, **kwargs: None
torch.autograd.gradcheck = lambda *args, raise_exception=True, **kwargs: raise_exception
ltp_core.core.mask.SoftPrune = _Agrees
ltp_core.soft_mask = ltp_core.core.mask.soft_mask = soft_mask
'''


def build_submissions(course: Path, folder: Path) -> None:
    for assignment in ASSIGNMENTS:
        submit(folder, "alice", assignment, solved(course, assignment))
        submit(folder, "bob", assignment, released(course, assignment))
        if assignment in WRONG:
            replace = [(r["old"], r["new"]) for r in wrong_spec(assignment)["replace"]]
            submit(folder, "carol", assignment, solved(course, assignment, replace))
    sign = [(r["old"], r["new"]) for r in wrong_spec(A1)["replace"]]
    (folder / "dave" / A1).mkdir(parents=True)                      # a folder, no notebook
    nb = solved(course, A1, sign)                                   # carol's mistakes, tests removed or edited
    nb.cells.remove(cell(nb, "t2_dv_dtau"))
    cell(nb, "t3_tau_grad").source = "pass  # my own test"
    nb.cells[nb.cells.index(cell(nb, "t1_values"))] = nbformat.v4.new_markdown_cell(
        cell(nb, "t1_values").source, metadata=cell(nb, "t1_values").metadata)
    submit(folder, "erin", A1, nb, name="my_answers.ipynb")        # under another name, too
    nb = solved(course, A1)                                         # raises in task 3's cell
    cell(nb, "t3_function_code").source = "import a_module_that_does_not_exist\n" + cell(nb, "t3_function_code").source
    submit(folder, "frank", A1, nb)
    nb = solved(course, A1)                                         # attack 1: read the gradebook, the sources
    nb.cells.insert(nb.cells.index(cell(nb, "setup")) + 1, nbformat.v4.new_code_cell(ATTACK_READ.format(course=course)))
    submit(folder, "grace", A1, nb)
    nb = solved(course, A1, [("grad_tau = (grad_v", "grad_tau = -(grad_v")])   # attack 2: patch the checks
    cell(nb, "t3_function_code").source += "\n" + ATTACK_PATCH
    submit(folder, "heidi", A1, nb)


# -- running the instructor's command -------------------------------------------------------

def cli(*args: str, cwd: Path, popen: bool = False, timeout: float = 1800):
    """`ltp-assignments ARGS` as the console script, with this environment's bin/ off PATH (the
    command must find nbgrader's `alembic` itself)."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                                                 if p != bin_dir)}
    command = [str(CLI), *args]
    if popen:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


def read_csv(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    table = {(r["student"], r["assignment"]): r for r in rows}
    assert len(table) == len(rows), "one row per student and assignment"
    return table


def gradebook_grades(course: Path, student: str, assignment: str) -> dict[str, tuple]:
    """{test cell id: (auto_score, max_score)} from the course's gradebook (written answers left out)."""
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course}/gradebook.db") as gb:
        return {g.name: (g.auto_score, g.max_score) for nb in gb.find_submission(assignment, student).notebooks
                for g in nb.grades if g.cell_type == "code"}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """The course released and graded: {"course", "csv", "rows", "feedback", "after_kill", "first", "log"}."""
    tmp = tmp_path_factory.mktemp("course")
    course = tmp / "course"
    shutil.copytree(COURSE, course, ignore=shutil.ignore_patterns("release", "submitted", "autograded", "feedback",
                                                                  "gradebook.db", ".nbgrader.log", "__pycache__",
                                                                  ".ipynb_checkpoints"))
    cli("release", "--course", str(course), cwd=course)
    subs = tmp / "submissions"
    build_submissions(course, subs)
    args = ("grade", str(subs), "--csv", str(tmp / "grades.csv"), "--course", str(course),
            "--feedback", str(tmp / "feedback"))

    # the first run is killed as soon as its first submission is graded ...
    run = cli(*args, cwd=course, popen=True)
    first = course / "autograded" / "alice" / A1 / f"{A1}.ipynb"
    deadline = time.monotonic() + 900
    while not executed(first) and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert executed(first), f"the first grading run finished no submission:\n{run.communicate()[0]}"
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    after_kill = gradebook_grades(course, "alice", A1)
    # ... and the second one finishes the rest
    log = cli(*args, cwd=course).stdout
    return {"course": course, "tmp": tmp, "subs": subs, "args": args, "csv": tmp / "grades.csv", "log": log,
            "rows": read_csv(tmp / "grades.csv"), "feedback": tmp / "feedback", "after_kill": after_kill}


def failed_ids(row: dict) -> set[str]:
    feedback = row["feedback"]
    if "failed: " not in feedback:
        return set()
    listed = feedback.split("failed: ", 1)[1].split(";")[0]
    return {item.strip().split(" ")[0] for item in listed.split("),")}


# -- the release --------------------------------------------------------------------------

def _hidden_text(source_nb) -> list[str]:
    """Lines of the source that only solutions and hidden tests hold (long enough to be telling)."""
    hidden, public = [], set()
    for c in source_nb.cells:
        inside = None
        for line in c.source.splitlines():
            if "### BEGIN SOLUTION" in line or "### BEGIN HIDDEN TESTS" in line:
                inside = True
            elif "### END SOLUTION" in line or "### END HIDDEN TESTS" in line:
                inside = None
            elif inside:
                hidden.append(line.strip())
            else:
                public.add(line.strip())
    return [line for line in hidden if len(line) >= 20 and line not in public]


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_release_holds_no_solution_or_hidden_test(graded, assignment):
    course = graded["course"]
    text = (course / "release" / assignment / f"{assignment}.ipynb").read_text()
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"):
        assert marker not in text
    source = nbformat.read(course / "source" / assignment / f"{assignment}.ipynb", as_version=4)
    secret = _hidden_text(source)
    assert secret, "the source has solution or hidden-test lines to look for"
    leaked = [line for line in secret if line in text]
    assert not leaked, f"the release of {assignment} holds solution or hidden-test text: {leaked[:3]}"
    graded_cells = [c for c in source.cells if _nbgrader(c).get("grade") and not _nbgrader(c).get("solution")]
    points = {}
    for c in graded_cells:
        task = _nbgrader(c)["grade_id"].split("_")[0]
        points[task] = points.get(task, 0) + 1
    assert len(points) >= 2 and max(points.values()) >= 2, "several test cells per task, so partial credit exists"
    assert any(_nbgrader(c).get("grade") and _nbgrader(c).get("solution") and c.cell_type == "markdown"
               for c in source.cells), "one written answer graded by hand"


# -- scores -------------------------------------------------------------------------------

@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_solution_gets_full_marks(graded, assignment):
    row = graded["rows"]["alice", assignment]
    assert row["status"] == "graded" and float(row["autograded_max"]) > 0
    assert row["autograded_score"] == row["autograded_max"], row["feedback"]
    assert "all autograded tests passed" in row["feedback"]
    assert float(row["awaiting_manual"]) > 0, "the written answer waits for the instructor"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_untouched_release_gets_zero(graded, assignment):
    row = graded["rows"]["bob", assignment]
    assert row["status"] == "graded" and float(row["autograded_score"]) == 0, row["feedback"]
    assert "NotImplementedError" in row["feedback"] and "solution cell(s) left as released" in row["feedback"]


@pytest.mark.parametrize("assignment", sorted(WRONG))
def test_wrong_solution_gets_partial_credit(graded, assignment):
    spec = wrong_spec(assignment)
    row = graded["rows"]["carol", assignment]
    assert 0 < float(row["autograded_score"]) < float(row["autograded_max"]), row["feedback"]
    assert failed_ids(row) == set(spec["failing"]), f"{spec['description']}: {row['feedback']}"
    grades = gradebook_grades(graded["course"], "carol", assignment)
    for grade_id in spec["failing"]:
        assert grades[grade_id][0] == 0
    for grade_id, (score, top) in grades.items():
        if grade_id not in spec["failing"]:
            assert score == top, f"{grade_id} should pass for this wrong solution"


def test_csv_has_one_row_per_student_and_assignment(graded):
    rows = graded["rows"]
    students = {"alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"}
    assert set(rows) == {(s, a) for s in students for a in ASSIGNMENTS}
    row = rows["alice", A1]
    tasks = [k for k in row if k.startswith("task") and not k.endswith("_max") and row[k] != ""]
    assert len(tasks) >= 3 and sum(float(row[k]) for k in tasks) == float(row["score"])


def test_interrupted_run_loses_no_grade(graded):
    assert graded["after_kill"] and all(score is not None for score, _ in graded["after_kill"].values()), \
        graded["after_kill"]
    assert graded["after_kill"] == gradebook_grades(graded["course"], "alice", A1)


def test_grading_again_gives_the_same_csv(graded, tmp_path):
    args = list(graded["args"])
    args[args.index("--csv") + 1] = str(tmp_path / "again.csv")
    started = time.monotonic()
    cli(*args, cwd=graded["course"])
    assert (tmp_path / "again.csv").read_bytes() == graded["csv"].read_bytes()
    assert time.monotonic() - started < 120, "nothing is graded twice"


def test_feedback_html_for_every_graded_submission(graded):
    for (student, assignment), row in graded["rows"].items():
        page = graded["feedback"] / student / assignment / f"{assignment}.html"
        assert page.is_file() == (row["status"] == "graded"), (student, assignment)
    page = (graded["feedback"] / "carol" / A1 / f"{A1}.html").read_text()
    assert "t2_dv_dtau" in page and "AssertionError" in page


# -- bad submissions ----------------------------------------------------------------------

def test_missing_notebook(graded):
    row = graded["rows"]["dave", A1]
    assert row["status"] == "missing" and float(row["score"]) == 0 and float(row["max_score"]) > 0
    assert f"no notebook {A1}.ipynb submitted" in row["feedback"]
    assert gradebook_grades(graded["course"], "dave", A1), "the gradebook holds dave's zeros too"
    for assignment in ASSIGNMENTS[1:]:
        assert graded["rows"]["dave", assignment]["status"] == "missing"


def test_deleted_and_edited_test_cells_are_restored(graded):
    erin, carol = graded["rows"]["erin", A1], graded["rows"]["carol", A1]
    assert f"graded my_answers.ipynb as {A1}.ipynb" in erin["feedback"]
    assert "deleted graded cell(s) t2_dv_dtau: restored" in erin["feedback"]
    assert "changed read-only cell(s) t1_values, t3_tau_grad: restored" in erin["feedback"]
    assert failed_ids(erin) == failed_ids(carol) and erin["autograded_score"] == carol["autograded_score"]
    nb = nbformat.read(graded["course"] / "autograded" / "erin" / A1 / f"{A1}.ipynb", as_version=4)
    assert "torch.testing.assert_close(dv_dtau(w, tau, T)" in cell(nb, "t2_dv_dtau").source
    assert cell(nb, "t1_values").cell_type == "code" and "pass  # my own test" not in cell(nb, "t3_tau_grad").source


def test_submission_that_raises(graded):
    row = graded["rows"]["frank", A1]
    assert row["status"] == "graded" and 0 < float(row["autograded_score"]) < float(row["autograded_max"])
    assert failed_ids(row) == {"t3_forward", "t3_tau_grad", "t3_exact_w_grad", "t3_paper_w_grad"}
    assert "errors in: t3_function_code (ModuleNotFoundError)" in row["feedback"]
    assert "NameError" in row["feedback"] and row["task3"] == "0" and row["task1"] == row["task1_max"]


def test_attack_reading_the_gradebook_and_hidden_tests(graded):
    """The kernel runs as another account with the course folder hidden where the grader runs as
    root; else (the grader's own account) it can read them, which the instructor's guide says.
    Either way it has its limits: 600 CPU seconds, 6 GiB of address space."""
    nb = nbformat.read(graded["course"] / "autograded" / "grace" / A1 / f"{A1}.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    attempts = [line for line in text.splitlines() if line.startswith("ATTACK")]
    assert len(attempts) == 8, text
    if os.geteuid() == 0:
        assert "kernel user 65534 nobody in /tmp/ltp-grading-" in text, text   # another account, its own folder
        assert not [a for a in attempts if a.endswith(" OK")], f"the kernel reached course files:\n{text}"
    else:
        assert any(a.endswith(" OK") for a in attempts), "as the grader's own account the kernel can read them"
    assert "LIMITS cpu 600 memory 6442450944" in text and "MEMORY 8 GiB MemoryError" in text, text
    row, alice = graded["rows"]["grace", A1], graded["rows"]["alice", A1]
    assert row["autograded_score"] == alice["autograded_score"]   # the attempt changed no grade
    assert gradebook_grades(graded["course"], "alice", A1) == graded["after_kill"]


def test_attack_patching_the_assertion_helpers(graded):
    """A wrong tau gradient with torch.testing, numpy.testing, gradcheck and ltp_core's reference
    patched: the visible checks pass, the hidden ones (a fresh copy of ltp_core's mask module,
    plain arithmetic) still fail it."""
    row = graded["rows"]["heidi", A1]
    assert failed_ids(row) == {"t3_tau_grad"}, row["feedback"]
    assert float(row["autograded_score"]) == float(row["autograded_max"]) - 1


def test_infinite_loop_and_regrading_a_copy(graded, tmp_path):
    """A cell that never ends is stopped by the per-cell time limit, its task scores 0, the rest is
    graded; a copy of an already graded submission gets the same grades; nothing else is regraded."""
    subs = graded["subs"]
    nb = solved(graded["course"], A1)
    loop = "import time\nwhile True:  # forever (asleep: no CPU burnt in the test)\n    time.sleep(0.5)\n"
    cell(nb, "t3_function_code").source = loop + cell(nb, "t3_function_code").source
    submit(subs, "ivan", A1, nb)
    shutil.copytree(subs / "carol" / A1, subs / "carol2" / A1)
    try:
        out = cli("grade", str(subs), "--csv", str(tmp_path / "loop.csv"), "--course", str(graded["course"]),
                  "--assignment", A1, "--cell-timeout", "20", cwd=graded["course"]).stdout
    finally:
        shutil.rmtree(subs / "ivan")
        shutil.rmtree(subs / "carol2")
    assert "2 to autograde" in out, out
    rows = read_csv(tmp_path / "loop.csv")
    ivan = rows["ivan", A1]
    assert "stopped by the per-cell time limit: t3_function_code" in ivan["feedback"]
    assert ivan["task3"] == "0" and ivan["task1"] == ivan["task1_max"] and ivan["task2"] == ivan["task2_max"]
    same = ("score", "autograded_score", "task1", "task2", "task3", "feedback")
    assert {k: rows["carol2", A1][k] for k in same} == {k: graded["rows"]["carol", A1][k] for k in same}
    alice = graded["rows"]["alice", A1]   # (the module's CSV has more task columns: it holds every assignment)
    assert rows["alice", A1] == {k: v for k, v in alice.items() if k in rows["alice", A1]}


def test_bad_command_lines(graded, tmp_path):
    from ltp_core.teaching.assignments import main

    assert main(["grade", str(tmp_path / "nowhere"), "--csv", str(tmp_path / "g.csv"),
                 "--course", str(graded["course"])]) == 2
    assert main(["release", "--course", str(tmp_path)]) == 2
    assert main(["release", "no_such_assignment", "--course", str(graded["course"])]) == 2


# -- the sandbox's parts, without a kernel --------------------------------------------------

def test_sandbox_command_hides_the_course_and_uses_this_python(tmp_path):
    from traitlets.config import Config

    from ltp_core.teaching.sandbox import LAUNCHER, SandboxKernelManager

    config = Config()
    config.CourseDirectory.root = str(tmp_path / "course")
    config.CourseDirectory.db_url = f"sqlite:///{tmp_path / 'books' / 'gradebook.db'}"
    km = SandboxKernelManager(config=config, workdir_root=str(tmp_path))
    assert km.hidden() == sorted([str((tmp_path / "books").resolve()), str((tmp_path / "course").resolve())])
    km.connection_file = str(tmp_path / "kernel.json")
    command = km.format_kernel_cmd(["--HistoryManager.hist_file=:memory:"])
    assert command[:2] == [sys.executable, str(LAUNCHER)] and command[-1] == "--HistoryManager.hist_file=:memory:"
    assert command[command.index("--hide") + 1] in km.hidden() and command.count("--hide") == 2
    workdir = Path(command[command.index("--workdir") + 1])
    assert workdir.is_dir() and workdir.parent == tmp_path
    km._remove_workdir()
    assert not workdir.exists()


def test_sandbox_launcher_refuses_bad_limits_and_users(tmp_path):
    from ltp_core.teaching import sandbox_kernel

    base = ["--workdir", str(tmp_path), "--connection-file", str(tmp_path / "c.json")]
    with pytest.raises(SystemExit, match="--cpu-seconds must be >= 1, got 0"):
        sandbox_kernel.main([*base, "--cpu-seconds", "0"])
    if os.geteuid() == 0:
        with pytest.raises(SystemExit, match="--user 'no-such-account' does not exist"):
            sandbox_kernel.main([*base, "--user", "no-such-account"])
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    uid = os.getuid() + 1 if os.getuid() != 65534 else 65533
    assert sandbox_kernel.closed_folders(str(private / "x"), uid, uid)[-1] == str(private)  # another account
    assert str(private) not in sandbox_kernel.closed_folders(str(private / "x"), os.getuid(), os.getgid())
