"""Every category and variant of the unified error hierarchy: the catalog scripts can catch.

Categories, kinds and message templates follow the seed's Rust hierarchy (``LLMSpellError``
and its enums); variants the seed only names, and the categories it leaves empty, are
given the fields a user of an LLM script host needs. Durations are seconds (float).
Field names that the seed uses for something else than a field (``context``,
``severity``) are renamed (``operation``/``location``, ``violation_severity``), since
those names belong to every error.

``polyspell catalog`` prints this module as a table.
"""

from typing import Literal

from bridge.errors import Json, SpellError
from bridge.languages import EngineLanguageName
from bridge.severity import Severity

Number = int | float
ScriptLanguage = EngineLanguageName  # a registered script language, or "python"
SecuritySeverity = Literal["low", "medium", "high", "critical"]

# fmt: off
# ---------------------------------------------------------------------------- agent


class AgentError(SpellError, category="agent", wrap_kind="execution_failed"):
    """An agent could not be found, started, configured or run to the end."""


class AgentNotFound(AgentError, kind="not_found", template="Agent not found: {agent_id}"):
    """No agent with this id."""
    agent_id: str


class AgentInitializationFailed(AgentError, kind="initialization_failed",
                                template="Agent initialization failed: {reason}"):
    """The agent could not start."""
    reason: str
    agent_type: str = ""


class AgentExecutionFailed(AgentError, kind="execution_failed",
                           template="Agent execution failed: {reason}"):
    """The agent ran and gave up or failed."""
    reason: str
    agent_id: str = ""
    execution_context: str | None = None


class AgentInvalidConfiguration(AgentError, kind="invalid_configuration",
                                template="Invalid agent configuration: {field} - {reason}"):
    """A setting of the agent is wrong."""
    field: str
    reason: str


class AgentTimeout(AgentError, kind="timeout", retryable=True, retry_after=1.0,
                   template="Agent timeout after {duration}s"):
    """The agent ran past its time."""
    duration: float
    agent_id: str = ""
    operation: str = ""


class AgentMemoryLimitExceeded(AgentError, kind="memory_limit_exceeded",
                               template="Agent memory limit exceeded: {used}MB > {limit}MB"):
    """The agent used more memory than allowed."""
    used: Number
    limit: Number
    agent_id: str = ""


class AgentToolExecutionError(AgentError, kind="tool_execution_error",
                              template="Tool execution error in agent {agent_id}: "
                                       "{tool_name} - {error}"):
    """A tool the agent called failed, seen from the agent."""
    agent_id: str
    tool_name: str
    error: str
    tool_parameters: Json = None


class AgentContextOverflow(AgentError, kind="context_overflow",
                           template="Agent context overflow: {current_tokens} > {max_tokens}"):
    """The agent's context window is full."""
    agent_id: str
    current_tokens: int
    max_tokens: int


class AgentStateCorruption(AgentError, kind="state_corruption", severity=Severity.CRITICAL,
                           template="Agent state corruption: {description}"):
    """The agent's state is no longer trustworthy."""
    agent_id: str
    description: str
    recovery_possible: bool = False


# ----------------------------------------------------------------------------- tool


class ToolError(SpellError, category="tool", wrap_kind="execution_failed"):
    """A Python (or script) tool could not be found, called or completed."""


class ToolNotFound(ToolError, kind="not_found", template="Tool not found: {tool_name}"):
    """A script called a tool that is not registered. ``did_you_mean``: the registered
    tool a typo away, if any; ``available``: the registered tools' names."""
    tool_name: str
    did_you_mean: str | None = None
    available: list[str] = []


class ToolExecutionFailed(ToolError, kind="execution_failed",
                          template="Tool execution failed: {tool_name} - {reason}"):
    """The tool raised; the original exception is the cause."""
    tool_name: str
    reason: str
    parameters: Json = None
    execution_time: float | None = None


class ToolInvalidParameters(ToolError, kind="invalid_parameters",
                            template="Invalid tool parameters: {tool_name} - {validation_error}"):
    """The parameters could not be read (error_type parse) or failed validation."""
    tool_name: str
    validation_error: str
    error_type: Literal["parse", "validation"] = "validation"
    received_parameters: Json = None
    expected_schema: Json = None


class ToolTimeout(ToolError, kind="timeout", retryable=True, retry_after=0.5,
                  template="Tool timeout: {tool_name} after {duration}s"):
    """The tool ran past its timeout."""
    tool_name: str
    duration: float
    partial_result: Json = None


class ToolPermissionDenied(ToolError, kind="permission_denied",
                           template="Tool permission denied: {tool_name} requires {permission}"):
    """The caller lacks a permission the tool requires."""
    tool_name: str
    permission: str
    security_context: str | None = None


class ToolResourceLimitExceeded(ToolError, kind="resource_limit_exceeded",
                                template="Tool resource limit exceeded: {tool_name} - "
                                         "{resource_type}: {used} > {limit}"):
    """The tool used more of a resource than allowed."""
    tool_name: str
    resource_type: str
    used: Number
    limit: Number


class ToolChainExecutionFailed(ToolError, kind="chain_execution_failed",
                               template="Tool chain execution failed at step {step_index}: "
                                        "{step_name} - {error}"):
    """A step of a chain of tools failed."""
    step_index: int
    step_name: str
    error: str
    completed_steps: list[str] = []


class ToolDependencyError(ToolError, kind="dependency_error",
                          template="Tool dependency error: {tool_name} depends on "
                                   "{dependency} - {error}"):
    """Something the tool depends on is missing or broken."""
    tool_name: str
    dependency: str
    error: str


# ------------------------------------------------------------------------- workflow


class WorkflowError(SpellError, category="workflow", wrap_kind="execution_failed"):
    """A workflow could not be defined, found or run."""


class WorkflowNotFound(WorkflowError, kind="not_found",
                       template="Workflow not found: {workflow_id}"):
    """No workflow with this id."""
    workflow_id: str


class WorkflowInvalidDefinition(WorkflowError, kind="invalid_definition",
                                template="Invalid workflow definition: {workflow_id} - {reason}"):
    """The workflow's definition is wrong."""
    workflow_id: str
    reason: str


class WorkflowStepFailed(WorkflowError, kind="step_failed",
                         template="Workflow step failed: {workflow_id} at {step} - {reason}"):
    """One step of the workflow failed."""
    workflow_id: str
    step: str
    reason: str


class WorkflowExecutionFailed(WorkflowError, kind="execution_failed",
                              template="Workflow execution failed: {workflow_id} - {reason}"):
    """The workflow failed as a whole."""
    workflow_id: str = ""
    reason: str


class WorkflowTimeout(WorkflowError, kind="timeout", retryable=True, retry_after=1.0,
                      template="Workflow timeout: {workflow_id} after {duration}s"):
    """The workflow ran past its time."""
    workflow_id: str
    duration: float


class WorkflowCycleDetected(WorkflowError, kind="cycle_detected",
                            template="Workflow cycle detected in {workflow_id}: {cycle}"):
    """The workflow's steps depend on each other in a circle."""
    workflow_id: str
    cycle: list[str]


# ----------------------------------------------------------------------------- hook


class HookError(SpellError, category="hook", wrap_kind="execution_failed"):
    """A lifecycle hook failed, timed out or blocked an operation."""


class HookExecutionFailed(HookError, kind="execution_failed",
                          template="Hook execution failed: {hook_name} at {hook_point} - {reason}"):
    """The hook raised."""
    hook_name: str
    hook_point: str = ""
    reason: str


class HookTimeout(HookError, kind="timeout", retryable=True, retry_after=0.5,
                  template="Hook timeout: {hook_name} after {duration}s"):
    """The hook ran past its time."""
    hook_name: str
    duration: float
    hook_point: str = ""


class HookRegistrationFailed(HookError, kind="registration_failed",
                             template="Hook registration failed: {hook_name} - {reason}"):
    """The hook could not be registered."""
    hook_name: str
    reason: str


class HookInvalidResult(HookError, kind="invalid_result",
                        template="Hook {hook_name} returned an invalid result: {reason}"):
    """The hook returned something its hook point cannot use."""
    hook_name: str
    reason: str
    hook_point: str = ""


class HookRejected(HookError, kind="rejected", severity=Severity.WARNING,
                   template="Hook {hook_name} blocked {hook_point}: {reason}"):
    """A controller hook vetoed the operation on purpose."""
    hook_name: str
    hook_point: str
    reason: str


# ---------------------------------------------------------------------------- event


class EventError(SpellError, category="event", wrap_kind="emission_failed"):
    """An event could not be emitted or handled."""


class EventEmissionFailed(EventError, kind="emission_failed",
                          template="Event emission failed: {event_type} - {reason}"):
    """The event could not be emitted."""
    event_type: str = ""
    reason: str


class EventHandlerFailed(EventError, kind="handler_failed",
                         template="Event handler failed: {handler} for {event_type} - {reason}"):
    """A handler of the event raised."""
    event_type: str
    handler: str
    reason: str


class EventSubscriptionFailed(EventError, kind="subscription_failed",
                              template="Event subscription failed: {event_type} - {reason}"):
    """A subscription could not be made."""
    event_type: str
    reason: str


class EventInvalidPayload(EventError, kind="invalid_payload",
                          template="Invalid event payload: {event_type} - {reason}"):
    """The event's payload does not match its type."""
    event_type: str
    reason: str


class EventQueueOverflow(EventError, kind="queue_overflow", retryable=True, retry_after=0.1,
                         template="Event queue overflow: {event_type} (capacity {capacity})"):
    """Events arrive faster than they are handled."""
    event_type: str
    capacity: int


# --------------------------------------------------------------------------- script


class ScriptError(SpellError, category="script", wrap_kind="runtime_error"):
    """A Lua or JavaScript script failed to compile or run, or hit a limit."""


class ScriptLua(ScriptError, kind="lua", template="Lua error in {script}: {error}"):
    """A Lua runtime error; script_line is where it was raised."""
    error: str
    script: str = ""
    script_line: int | None = None
    stack_trace: str | None = None
    thrown: Json = None  # the value given to error(), when it was not a string


class ScriptJavascript(ScriptError, kind="javascript",
                       template="JavaScript error in {script}: {error}"):
    """A JavaScript runtime error (error is ``Name: message``)."""
    error: str
    error_name: str = "Error"
    script: str = ""
    script_line: int | None = None
    stack_trace: str | None = None
    thrown: Json = None  # the value thrown, when it was not an Error


class ScriptCompilationFailed(ScriptError, kind="compilation_failed",
                              template="Script compilation failed: {language} - {error}"):
    """A syntax error: the script never ran."""
    language: ScriptLanguage
    error: str
    file: str = ""
    line: int | None = None
    column: int | None = None
    source_code: str | None = None


class ScriptRuntimeError(ScriptError, kind="runtime_error",
                         template="Script runtime error: {language} - {error}"):
    """The engine failed in a way that is not the script's own error."""
    language: ScriptLanguage
    error: str
    execution_context: str | None = None
    reason: str = ""


class ScriptCrossEngineCommunication(ScriptError, kind="cross_engine_communication",
                                     template="Cross-engine communication error: "
                                              "{from_engine} -> {to_engine} - {error}"):
    """Data could not cross from one engine to another."""
    from_engine: ScriptLanguage
    to_engine: ScriptLanguage
    error: str
    data_type: str | None = None


class ScriptSecurityViolation(ScriptError, kind="security_violation", severity=Severity.CRITICAL,
                              template="Script security violation: {violation_type} "
                                       "in {location}"):
    """The script did something its sandbox forbids."""
    violation_type: str
    location: str = ""
    violation_severity: SecuritySeverity = "high"


class ScriptResourceExhaustion(ScriptError, kind="resource_exhaustion",
                               template="Script resource exhaustion: {resource_type} "
                                        "in {language}"):
    """The script hit a limit: resource_type is time, stack or memory."""
    language: ScriptLanguage
    resource_type: str
    current_usage: Number = 0
    limit: Number = 0

    def default_message(self) -> str:
        """The template's words, and for the time limit, what it was and how to raise it."""
        message = super().default_message()
        limit = self.fields["limit"]
        if self.fields["resource_type"] == "time" and limit:
            message += (f" (its time limit, {limit:g} s, ran out: raise it with --timeout S "
                        "on polyspell run, timeout = S in a plan's task, or timeout=S in "
                        "Host(...))")
        return message


# --------------------------------------------------------------------------- bridge


class BridgeError(SpellError, category="bridge", wrap_kind="translation_failed"):
    """A value could not cross a language boundary, or does not describe a valid error."""


class BridgeInvalidError(BridgeError, kind="invalid_error",
                         template="Invalid {error_type} error: {reason}"):
    """An error was built with missing, unknown or wrongly typed fields."""
    error_type: str
    reason: str
    field: str = ""


class BridgeDeserializationFailed(BridgeError, kind="deserialization_failed",
                                  template="Cannot read error JSON at {path}: {reason}"):
    """Error JSON that is not valid, or does not describe a known error."""
    reason: str
    path: str = "$"


class BridgeTranslationFailed(BridgeError, kind="translation_failed",
                              template="Error translation failed: {from_language} -> "
                                       "{to_language} - {reason}"):
    """An error could not be translated between languages."""
    reason: str
    from_language: str = ""
    to_language: str = ""


class BridgeTypeConversion(BridgeError, kind="type_conversion",
                           template="Cannot convert {data_type} from {from_language} "
                                    "to {to_language}: {reason}"):
    """A value has no counterpart in the receiving language."""
    data_type: str
    from_language: str
    to_language: str
    reason: str


class BridgeProtocolViolation(BridgeError, kind="protocol_violation",
                              template="Bridge protocol violation: {reason}"):
    """A message between host and engine is malformed."""
    reason: str
    envelope: Json = None


# ------------------------------------------------------------------ async_execution


class AsyncExecutionError(SpellError, category="async_execution", wrap_kind="task_failed"):
    """A coordinated task could not be found, failed, timed out or was cancelled."""


class AsyncTaskNotFound(AsyncExecutionError, kind="task_not_found",
                        template="Task not found: {task_id}"):
    """No task with this id."""
    task_id: str


class AsyncTaskFailed(AsyncExecutionError, kind="task_failed",
                      template="Task execution failed: {task_id} - {reason}"):
    """The task failed."""
    task_id: str = ""
    reason: str
    task_type: str = ""
    execution_time: float | None = None


class AsyncTaskTimeout(AsyncExecutionError, kind="task_timeout", retryable=True, retry_after=0.5,
                       template="Task timeout: {task_id} after {duration}s"):
    """The task ran past its time."""
    task_id: str
    duration: float
    task_type: str = ""


class AsyncTaskCancelled(AsyncExecutionError, kind="task_cancelled", severity=Severity.WARNING,
                         template="Task cancelled: {task_id} - {reason}"):
    """The task was cancelled (by a failure elsewhere, a user, or a deadline)."""
    task_id: str
    reason: str
    cancellation_source: str = ""


class AsyncCoordinationFailure(AsyncExecutionError, kind="coordination_failure",
                               template="Coordination failure: {coordination_id} - {error}"):
    """Tasks on several engines could not be coordinated."""
    coordination_id: str
    error: str
    successful_engines: list[str] = []
    failed_engines: list[str] = []


class AsyncResourceAllocationFailed(AsyncExecutionError, kind="resource_allocation_failed",
                                    retryable=True, retry_after=0.5,
                                    template="Resource allocation failed: {resource_type} - "
                                             "{reason}"):
    """A task could not get the resources it needs."""
    resource_type: str
    reason: str
    requested_amount: Number = 0
    available_amount: Number = 0


class AsyncContextCorruption(AsyncExecutionError, kind="context_corruption",
                             severity=Severity.CRITICAL,
                             template="Async context corruption: {context_id} - {description}"):
    """The state shared by tasks is no longer trustworthy."""
    context_id: str
    description: str
    recovery_attempts: int = 0


# -------------------------------------------------------- cross_engine_coordination


class CrossEngineCoordinationError(SpellError, category="cross_engine_coordination",
                                   wrap_kind="coordination_failed"):
    """A plan of tasks across engines did not fully succeed; carries the report."""


class CoordinationPartialFailure(CrossEngineCoordinationError, kind="partial_failure",
                                 template="Plan {plan} partially failed: {failed} of {total} "
                                          "tasks failed ({decision})"):
    """Some tasks failed, none because of another."""
    plan: str
    failed: int
    total: int
    decision: Literal["continue_with_successful", "fail_entire_operation"]
    report: Json = None


class CoordinationCascadingFailure(CrossEngineCoordinationError, kind="cascading_failure",
                                   template="Plan {plan} failed in a cascade from {root_causes}"):
    """One failure took other tasks down with it."""
    plan: str
    root_causes: list[str]
    propagation: list[str] = []
    report: Json = None


class CoordinationAllFailed(CrossEngineCoordinationError, kind="all_failed",
                           template="Plan {plan}: every task failed"):
    """No task succeeded."""
    plan: str
    report: Json = None


class CoordinationEngineUnavailable(CrossEngineCoordinationError, kind="engine_unavailable",
                                    retryable=True, retry_after=1.0,
                                    template="Engine unavailable: {engine} - {reason}"):
    """No engine of the needed language could be had."""
    engine: str
    reason: str


class CoordinationFailed(CrossEngineCoordinationError, kind="coordination_failed",
                         template="Cross-engine coordination failed: {reason}"):
    """The coordinator itself failed."""
    reason: str
    plan: str = ""


# -------------------------------------------------------------------- configuration


class ConfigurationError(SpellError, category="configuration", wrap_kind="invalid_value"):
    """Settings, command-line arguments, plans or tool files that are wrong."""


class ConfigurationInvalidValue(ConfigurationError, kind="invalid_value",
                                template="Invalid configuration value for {key}: {reason}"):
    """A setting has a value it cannot take."""
    key: str = ""
    reason: str
    value: Json = None


class ConfigurationMissing(ConfigurationError, kind="missing",
                           template="Missing configuration: {key}"):
    """A required setting is absent."""
    key: str


class ConfigurationFileNotFound(ConfigurationError, kind="file_not_found",
                                template="File not found: {path}"):
    """A file named in the configuration or on the command line does not exist."""
    path: str


class ConfigurationParseFailed(ConfigurationError, kind="parse_failed",
                               template="Cannot parse {source}: {reason}"):
    """A configuration file is not readable as its format."""
    source: str
    reason: str
    line: int | None = None


class ConfigurationLoadFailed(ConfigurationError, kind="load_failed",
                             template="Cannot load {path}: {reason}"):
    """A tools file or plugin could not be imported."""
    path: str
    reason: str


class ConfigurationInvalidPlan(ConfigurationError, kind="invalid_plan",
                               template="Invalid plan {plan}: {reason}"):
    """A task plan is wrong (cycle, unknown id, missing script...)."""
    plan: str
    reason: str
    location: str = ""


class ConfigurationUsage(ConfigurationError, kind="usage", template="{reason}"):
    """A command was called with the wrong arguments."""
    reason: str
    command: str = ""


# -------------------------------------------------------------------------- runtime


class SpellRuntimeError(SpellError, category="runtime", script_name="RuntimeError",
                        wrap_kind="python_exception"):
    """Failures of the host at run time (named so as not to shadow Python's RuntimeError)."""


class RuntimePythonException(SpellRuntimeError, kind="python_exception",
                             template="{exception_type}: {exception_message}"):
    """A plain Python exception, kept with its type name, message and frames."""
    exception_type: str
    exception_message: str = ""


class RuntimeInternalError(SpellRuntimeError, kind="internal_error", severity=Severity.CRITICAL,
                           template="Internal error: {reason}"):
    """A bug in polyspell itself."""
    reason: str


class RuntimeWorkerDied(SpellRuntimeError, kind="worker_died", severity=Severity.CRITICAL,
                        template="Worker process died: {reason}"):
    """The worker process running an engine ended in the middle of a step (process
    isolation): killed by ``signal`` (its name, such as ``SIGSEGV``), or exited with
    ``exit_status``; ``reason`` says which, in words. The host starts another worker."""
    reason: str
    signal: str = ""
    exit_status: int | None = None
    pid: int = 0


class RuntimeRemoteFailed(SpellRuntimeError, kind="remote_failed", retryable=True,
                          retry_after=1.0,
                          template="Remote execution failed on {executor}: {reason}"):
    """The executor running a task's try elsewhere lost it (a distributed plan): a Ray
    worker, node or actor that died, an object lost, Ray's out-of-memory killer. The
    executor's own error is the cause. Retryable, by the task's ``retry``: the next try
    may run on another worker."""
    executor: str
    reason: str
    node: str = ""


class RuntimeAllFallbacksFailed(SpellRuntimeError, kind="all_fallbacks_failed",
                                template="All fallbacks failed: {attempted_options} options "
                                         "attempted"):
    """Every fallback of an operation failed; ``errors`` holds each one's error as JSON, in
    the order tried (the first is also the cause).

    In Python, :attr:`exceptions` gives them back as errors and
    :meth:`as_exception_group` as an ``ExceptionGroup`` (``except*`` works on it).
    """
    attempted_options: int
    operation: str = ""
    errors: Json = []

    @property
    def exceptions(self) -> tuple[SpellError, ...]:
        """Every option's error, in the order tried, as errors: the first is the cause
        itself (its whole chain) when there is one, the others are read back from
        ``fields.errors``; an entry that is no error JSON is ``bridge/deserialization_failed``
        in its place."""
        entries = self.fields.get("errors")
        if not isinstance(entries, list):
            entries = []
        out: list[SpellError] = []
        for n, entry in enumerate(entries):
            if n == 0 and self.cause is not None:
                out.append(self.cause)
                continue
            try:
                out.append(SpellError.from_dict(entry, _path=f"$.fields.errors[{n}]"))
            except SpellError as bad:
                out.append(bad)
        return tuple(out)

    def as_exception_group(self) -> ExceptionGroup:
        """:attr:`exceptions` as an ``ExceptionGroup`` with this error's message:
        ``except* ToolError`` then catches the options' tool errors. An error without
        entries gives a group of itself."""
        return ExceptionGroup(self.message, list(self.exceptions) or [self])


class RuntimeCircuitBreakerOpen(SpellRuntimeError, kind="circuit_breaker_open",
                                severity=Severity.WARNING, retryable=True, retry_after=5.0,
                                template="Circuit breaker open: {service} "
                                         "(open for {opened_duration}s)"):
    """Calls to a failing service are refused until it recovers."""
    service: str
    opened_duration: float = 0.0


class RuntimeRetriesExhausted(SpellRuntimeError, kind="retries_exhausted",
                              template="Retries exhausted: {operation} after {attempts} "
                                       "attempts"):
    """An operation failed on every attempt; the last failure is the cause."""
    operation: str
    attempts: int


# ------------------------------------------------------------------------- security


class SecurityError(SpellError, category="security", wrap_kind="policy_violation",
                    severity=Severity.CRITICAL):
    """Something tried to do what the sandbox or a policy forbids."""


class SecurityScriptSafetyViolation(SecurityError, kind="script_safety_violation",
                                    template="Script safety violation in {engine}: {violation}"):
    """A script reached for something outside its sandbox."""
    engine: ScriptLanguage
    violation: str
    violation_severity: SecuritySeverity = "high"


class SecurityAccessDenied(SecurityError, kind="access_denied", severity=Severity.ERROR,
                           template="Access denied: {operation} on {resource}"):
    """An operation on a resource is not allowed."""
    resource: str
    operation: str
    reason: str = ""


class SecurityPolicyViolation(SecurityError, kind="policy_violation",
                              template="Security policy violation: {policy} - {reason}"):
    """A security policy was broken."""
    policy: str = ""
    reason: str


class SecurityAuthenticationFailed(SecurityError, kind="authentication_failed",
                                   severity=Severity.ERROR,
                                   template="Authentication failed for {principal}: {reason}"):
    """Credentials were missing or wrong."""
    principal: str
    reason: str


# ------------------------------------------------------------------------- resource


class ResourceError(SpellError, category="resource", wrap_kind="quota_exceeded"):
    """Memory, quotas or pools ran out."""


class ResourceMemoryExhaustion(ResourceError, kind="memory_exhaustion", severity=Severity.CRITICAL,
                               template="Memory exhausted in {location}: {description}"):
    """An engine or the host ran out of the memory it may use."""
    location: str
    description: str = ""
    requested: int = 0
    available: int = 0


class ResourceQuotaExceeded(ResourceError, kind="quota_exceeded",
                            template="Quota exceeded for {resource}: {used} > {limit}"):
    """More of a resource was used than allowed."""
    resource: str = ""
    used: Number = 0
    limit: Number = 0
    reason: str = ""


class ResourcePoolExhausted(ResourceError, kind="pool_exhausted", retryable=True, retry_after=0.5,
                            template="Resource pool exhausted: {pool} (capacity {capacity})"):
    """Every member of a pool (engines, connections) is in use."""
    pool: str
    capacity: int


# ------------------------------------------------------------------------- provider


class ProviderError(SpellError, category="provider", wrap_kind="request_failed"):
    """An LLM provider refused, failed or answered badly."""


class ProviderRateLimited(ProviderError, kind="rate_limited", severity=Severity.WARNING,
                          retryable=True, retry_after=1.0,
                          template="Provider rate limited: {provider}"):
    """Too many requests; wait retry_after seconds."""
    provider: str
    model: str | None = None
    limit: str | None = None


class ProviderAuthentication(ProviderError, kind="authentication",
                             template="Provider authentication failed: {provider} - {reason}"):
    """The provider rejected the credentials."""
    provider: str
    reason: str = ""


class ProviderUnavailable(ProviderError, kind="unavailable", retryable=True, retry_after=2.0,
                          template="Provider unavailable: {provider} - {reason}"):
    """The provider is down or overloaded."""
    provider: str
    reason: str = ""
    status: int | None = None


class ProviderTimeout(ProviderError, kind="timeout", retryable=True, retry_after=1.0,
                      template="Provider timeout: {provider} after {duration}s"):
    """The provider did not answer in time."""
    provider: str
    duration: float


class ProviderInvalidResponse(ProviderError, kind="invalid_response",
                              template="Invalid response from {provider}: {reason}"):
    """The provider's answer could not be used."""
    provider: str
    reason: str
    response_excerpt: str | None = None


class ProviderQuotaExceeded(ProviderError, kind="quota_exceeded",
                            template="Provider quota exceeded: {provider} - {reason}"):
    """The account's quota is used up (not transient, unlike a rate limit)."""
    provider: str
    reason: str = ""


class ProviderModelNotFound(ProviderError, kind="model_not_found",
                            template="Model not found: {model} at {provider}"):
    """The provider has no such model."""
    provider: str
    model: str


class ProviderContentFiltered(ProviderError, kind="content_filtered", severity=Severity.WARNING,
                              template="Content filtered by {provider}: {reason}"):
    """The provider refused the content."""
    provider: str
    reason: str = ""


class ProviderContextLengthExceeded(ProviderError, kind="context_length_exceeded",
                                    template="Context length exceeded for {model}: "
                                             "{tokens} > {max_tokens}"):
    """The prompt is longer than the model takes."""
    provider: str
    model: str
    tokens: int
    max_tokens: int


class ProviderRequestFailed(ProviderError, kind="request_failed",
                            template="Provider request failed: {provider} - {reason}"):
    """Any other failed provider request."""
    provider: str = ""
    reason: str


# -------------------------------------------------------------------------- storage


class StorageError(SpellError, category="storage", wrap_kind="operation_failed"):
    """Reading or writing stored state failed."""


class StorageNotFound(StorageError, kind="not_found", template="Not found in {store}: {key}"):
    """No value under this key."""
    key: str
    store: str = "storage"


class StorageReadFailed(StorageError, kind="read_failed",
                        template="Storage read failed: {key} - {reason}"):
    """A value could not be read."""
    key: str
    reason: str


class StorageWriteFailed(StorageError, kind="write_failed",
                         template="Storage write failed: {key} - {reason}"):
    """A value could not be written."""
    key: str
    reason: str


class StorageUnavailable(StorageError, kind="unavailable", retryable=True, retry_after=1.0,
                         template="Storage unavailable: {backend} - {reason}"):
    """The storage backend cannot be reached."""
    backend: str
    reason: str = ""


class StorageConflict(StorageError, kind="conflict", retryable=True, retry_after=0.1,
                      template="Storage conflict on {key}: {reason}"):
    """A concurrent write won; read again and retry."""
    key: str
    reason: str = ""


class StorageCorrupted(StorageError, kind="corrupted", severity=Severity.CRITICAL,
                       template="Stored data corrupted: {key} - {reason}"):
    """Stored data does not read back as written."""
    key: str
    reason: str


class StorageOperationFailed(StorageError, kind="operation_failed",
                             template="Storage operation failed: {reason}"):
    """Any other storage failure."""
    reason: str
    operation: str = ""


# -------------------------------------------------------------------------- network


class NetworkError(SpellError, category="network", wrap_kind="connection"):
    """A network request failed."""


class NetworkTimeout(NetworkError, kind="timeout", retryable=True, retry_after=1.0,
                     template="Network timeout: {endpoint} after {duration}s"):
    """No answer in time."""
    endpoint: str
    duration: float


class NetworkConnection(NetworkError, kind="connection", retryable=True, retry_after=1.0,
                        template="Connection failed: {endpoint} - {reason}"):
    """The connection could not be made or was lost."""
    endpoint: str = ""
    reason: str


class NetworkDnsResolution(NetworkError, kind="dns_resolution", retryable=True, retry_after=2.0,
                           template="DNS resolution failed: {host} - {reason}"):
    """The host name did not resolve."""
    host: str
    reason: str = ""


class NetworkTls(NetworkError, kind="tls", template="TLS failure: {endpoint} - {reason}"):
    """The TLS handshake or certificate failed."""
    endpoint: str
    reason: str


class NetworkHttpStatus(NetworkError, kind="http_status",
                        template="HTTP {status} from {endpoint}: {reason}"):
    """An HTTP error status (set retryable=True for 5xx and 429)."""
    endpoint: str
    status: int
    reason: str = ""
# fmt: on
