//! What a machine's Omaha events mean for its instance: each is recorded with a description for
//! the operator, and moves the instance's status (downloading, installed, complete) or ends its
//! update as failed or rolled back.

use kiln_contract::errorcode;
use kiln_updater::omaha::{Event, EventResult, EventType};

use crate::clock::Timestamp;
use crate::model::{Instance, InstanceEvent, Status};
use crate::store::Write;
use crate::writer::Writer;

use super::state::AppState;

impl AppState {
    pub(super) fn apply_event(
        &mut self,
        instance: &mut Instance,
        event: &Event,
        now: Timestamp,
        writer: &Writer,
    ) {
        let description = match (event.eventtype, event.eventresult) {
            (_, EventResult::Error) => errorcode::describe(event.errorcode.unwrap_or(1)),
            (EventType::UpdateDownloadStarted, _) => "DownloadStarted".into(),
            (EventType::UpdateDownloadFinished, _) => "DownloadFinished".into(),
            (EventType::UpdateComplete, EventResult::Success) => "Installed".into(),
            (EventType::UpdateComplete, EventResult::SuccessReboot) => "UpdatedAfterReboot".into(),
            (EventType::UpdateComplete, EventResult::UpdateDeferred) => "Deferred".into(),
            (t, r) => format!("Event({}/{})", u32::from(t), u32::from(r)),
        };
        writer.send(Write::Event(InstanceEvent {
            machine_id: instance.machine_id.clone(),
            app_id: self.record.id.clone(),
            at: now,
            event_type: event.eventtype.into(),
            event_result: event.eventresult.into(),
            error_code: event.errorcode,
            description: description.clone(),
            version: instance.version.clone(),
            previous_version: event.previousversion.clone(),
        }));
        match (event.eventtype, event.eventresult) {
            (_, EventResult::Error) => {
                // Kiln's agent says outright when the boot loader fell back to the old slot.
                let status = if event.errorcode == Some(errorcode::BOOT_FALLBACK) {
                    Status::RolledBack
                } else {
                    Status::Error
                };
                self.finish(instance, status, Some(description), now, writer);
            }
            (
                EventType::UpdateDownloadStarted | EventType::UpdateDownloadFinished,
                EventResult::Success,
            ) if instance.status.in_flight() => {
                instance.status = Status::Downloading;
            }
            (EventType::UpdateComplete, EventResult::Success) if instance.status.in_flight() => {
                instance.status = Status::Installed;
            }
            (EventType::UpdateComplete, EventResult::SuccessReboot) => {
                if instance.target_version.is_none() {
                    instance.target_version = Some(instance.version.clone());
                }
                self.finish(instance, Status::Complete, None, now, writer);
            }
            _ => {}
        }
    }
}
