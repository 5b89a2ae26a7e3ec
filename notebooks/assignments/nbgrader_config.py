# nbgrader configuration of the LTP course: the folder this file is in is the course directory.
#
#   source/<assignment>/<assignment>.ipynb   the instructor's notebooks (solutions, hidden tests)
#   release/, submitted/, autograded/, feedback/, gradebook.db   made by nbgrader; never committed
#
# Plain nbgrader commands work from this folder (`nbgrader generate_assignment a1_soft_mask`);
# `ltp-assignments release|grade` wraps the steps that take several (see docs/assignments.md).
import os

c = get_config()  # noqa: F821 (nbgrader's config loader provides it)

c.CourseDirectory.course_id = "ltp-pruning"
c.CourseDirectory.root = os.path.dirname(os.path.abspath(__file__))

# Grading runs students' code: each notebook in a kernel of this Python environment (never the
# kernelspec named in the submission), started by a launcher that gives it its own empty folder
# and CPU-time, memory and process limits (ltp_core.teaching.sandbox). A cell that runs longer
# than the timeout is interrupted; its error goes into the notebook and its tests score zero.
c.Execute.kernel_manager_class = "ltp_core.teaching.sandbox.SandboxKernelManager"
c.Execute.timeout = 60                      # seconds per cell
c.Execute.interrupt_on_timeout = True

# A graded cell a student deleted comes back from the gradebook (nbgrader's copy, checksummed),
# so its tests still run and its points still count.
c.OverwriteCells.add_missing_cells = True

# What a student sees in place of a solution.
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
